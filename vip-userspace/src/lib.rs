//! vip: a fast, exact data plane for virtual-IP failover.
//!
//! The agent (`agent`) loads the XDP program (`dataplane`), programs one map entry per
//! VIP, announces takeovers (`garp`), manages the VIP addresses (`netlink`) and answers
//! the CLI on a unix socket (`control`). `config` parses and validates the TOML file.

// The agent must not panic on bad input or a failed system call: errors are returned.
// Tests may unwrap (clippy.toml: allow-unwrap-in-tests).
#![deny(clippy::unwrap_used)]

pub mod addresses;
pub mod advert;
pub mod agent;
pub mod cli;
pub mod config;
pub mod control;
pub mod counters;
pub mod dataplane;
pub mod driver;
pub mod echo;
pub mod election;
pub mod exhaustion;
pub mod frames;
pub mod garp;
pub mod health;
pub mod host;
pub mod keygen;
pub mod mac;
pub mod membership;
pub mod metrics;
pub mod netlink;
pub mod ownership;
pub mod reason;
pub mod solicited;
pub mod speaker;
pub mod state;
pub mod status;
pub mod xdpmode;
