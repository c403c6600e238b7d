//! What the crate's two XDP objects share: the bounds-checked frame access
//! (`packet`).
//!
//! * `vip` (src/main.rs): the data plane the agent loads, and the XDP_PASS-only
//!   program (`vip xdp-pass`, the benchmarks' floor).
//! * `vip-bench` (src/bench.rs): the benchmarks' traffic generator and counting sink,
//!   with their own maps. Only the benchmarks load it; an agent never does.
#![no_std]

pub mod packet;
