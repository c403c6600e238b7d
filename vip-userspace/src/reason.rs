//! Why a group changed state, as a typed value: the log line, `vip status` and the
//! `vip_transitions_total{reason=...}` label are all rendered from it, so none of them
//! has to guess from a sentence.

use std::{fmt, net::IpAddr, time::Duration};

use crate::{
    config::Role,
    state::{Pin, State},
};

/// The cause of a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The agent is starting.
    Starting,
    /// An elected group starts as standby and listens for the active for a full
    /// detection time before it may claim the VIPs.
    Electing,
    /// A restarted agent found its predecessor's data plane serving the group, with a
    /// lease that still ran: it listens for the current owner before it renews it.
    Resuming,
    /// ... and after listening no other active was heard: it serves again.
    Adopted,
    /// Our data-plane lease ran out while we were active: the agent was not scheduled
    /// (stopped, starved) for `stalled`, past the lease. Back to listening.
    LeaseExpired { stalled: Duration, late: Duration },
    /// Our link went down while we were active: back to listening.
    LinkDown,
    /// A better peer claimed the VIPs, we released them, but it never took them.
    ClaimUnanswered { by: IpAddr },
    /// The configured role of a static group.
    Configured(Role),
    /// A static active group waits for its first health results.
    WaitingForHealth,
    /// A keepalived-driven group waits for keepalived's first word.
    WaitingForKeepalived,
    /// Nothing was heard from the active (or from anyone, at start) for this long.
    PeerSilent { silent: Duration },
    /// The active's data plane stopped answering our echo probes (`crate::echo`).
    EchoLost {
        peer: IpAddr,
        missed: u32,
        silent: Duration,
    },
    /// The active released the VIPs (planned handover: demote, stop, reload).
    Released { by: IpAddr },
    /// We preempted a lower-priority active.
    Preempt { active: IpAddr, priority: u8 },
    /// A higher-priority active appeared; we yield to it.
    Yield { to: IpAddr, priority: u8 },
    /// Two actives of equal priority: the lower address yields.
    SplitBrain { with: IpAddr },
    /// Our planned handover completed: the successor is active.
    HandedOver { to: IpAddr, priority: u8 },
    /// Our planned handover found no successor in time; we gave up anyway.
    HandoverUnanswered,
    /// `vip promote`.
    Promoted,
    /// `vip demote`.
    Demoted,
    /// A health check failed.
    Health { check: &'static str, detail: String },
    /// Health checks pass again.
    Recovered { check: &'static str, detail: String },
    /// keepalived's notify script.
    Keepalived {
        kind: String,
        name: String,
        state: String,
        priority: Option<u8>,
    },
}

impl Reason {
    /// A short, stable label (metrics, status counts).
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::Starting | Reason::Electing => "start",
            Reason::WaitingForHealth | Reason::WaitingForKeepalived => "start",
            Reason::Resuming => "start",
            Reason::Adopted => "adopted",
            Reason::LeaseExpired { .. } => "lease_expired",
            Reason::LinkDown => "link_down",
            Reason::ClaimUnanswered { .. } => "claim_unanswered",
            Reason::Configured(_) => "configured",
            Reason::PeerSilent { .. } => "peer_silent",
            Reason::EchoLost { .. } => "echo_lost",
            Reason::Released { .. } => "release",
            Reason::Preempt { .. } => "preempt",
            Reason::Yield { .. } => "yield",
            Reason::SplitBrain { .. } => "split_brain",
            Reason::HandedOver { .. } => "handover",
            Reason::HandoverUnanswered => "handover_unanswered",
            Reason::Promoted => "promote",
            Reason::Demoted => "demote",
            Reason::Health { .. } => "health",
            Reason::Recovered { .. } => "recover",
            Reason::Keepalived { .. } => "keepalived",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Starting => write!(f, "starting"),
            Reason::Electing => write!(f, "electing: listening for the active"),
            Reason::Resuming => write!(
                f,
                "adopted the running data plane (was active): listening for the current owner before renewing its lease"
            ),
            Reason::Adopted => write!(
                f,
                "adopted the running data plane (was active); no other active heard: serving on"
            ),
            Reason::LeaseExpired { stalled, late } => write!(
                f,
                "stalled for {} ms, lease expired ({} ms ago), listening again",
                stalled.as_millis(),
                late.as_millis()
            ),
            Reason::LinkDown => write!(f, "link down: no longer serving, listening again"),
            Reason::ClaimUnanswered { by } => write!(
                f,
                "{by} claimed the VIPs but did not take them after our release: serving again"
            ),
            Reason::Configured(Role::Active) => write!(f, "configured role: active"),
            Reason::Configured(Role::Standby) => write!(f, "configured role: standby"),
            Reason::WaitingForHealth => {
                write!(f, "configured role: active, waiting for health checks")
            }
            Reason::WaitingForKeepalived => write!(f, "waiting for keepalived"),
            Reason::PeerSilent { silent } => {
                write!(
                    f,
                    "no advertisement from the active for {} ms",
                    silent.as_millis()
                )
            }
            Reason::EchoLost {
                peer,
                missed,
                silent,
            } => write!(
                f,
                "the data plane of {peer} stopped answering: {missed} probes unanswered, {:.1} ms since its last reply",
                silent.as_secs_f64() * 1e3
            ),
            Reason::Released { by } => write!(f, "{by} released the VIPs (planned handover)"),
            Reason::Preempt { active, priority } => {
                write!(
                    f,
                    "preempting lower-priority active {active} (priority {priority})"
                )
            }
            Reason::Yield { to, priority } => {
                write!(
                    f,
                    "yielding to higher-priority active {to} (priority {priority})"
                )
            }
            Reason::SplitBrain { with } => {
                write!(
                    f,
                    "split brain with {with} (equal priority, higher address): yielding"
                )
            }
            Reason::HandedOver { to, priority } => {
                write!(f, "handed over to {to} (priority {priority})")
            }
            Reason::HandoverUnanswered => write!(f, "handed over, but no standby took over"),
            Reason::Promoted => write!(f, "promoted by `vip promote`"),
            Reason::Demoted => write!(f, "demoted by `vip demote`"),
            Reason::Health { check, detail } => write!(f, "{check}: {detail}"),
            Reason::Recovered { check, detail } => write!(f, "healthy again ({check}: {detail})"),
            Reason::Keepalived {
                kind,
                name,
                state,
                priority,
            } => {
                write!(f, "keepalived: {kind} {name} {state}")?;
                if let Some(p) = priority {
                    write!(f, " (priority {p})")?;
                }
                Ok(())
            }
        }
    }
}

/// Labels for the status's election pin (kept here so status and metrics agree).
pub fn pin_label(p: Pin) -> Option<&'static str> {
    match p {
        Pin::None => None,
        Pin::Active => Some("active"),
        Pin::Standby => Some("standby"),
    }
}

/// The role a state presents to operators.
pub fn role_label(s: State) -> &'static str {
    if s == State::Active {
        "active"
    } else {
        "standby"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_kind_and_a_sentence() {
        let a: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let all = [
            Reason::Starting,
            Reason::Electing,
            Reason::Released { by: a },
            Reason::PeerSilent {
                silent: Duration::from_millis(315),
            },
            Reason::HandedOver { to: a, priority: 9 },
        ];
        for r in &all {
            assert!(!r.kind().is_empty());
            assert!(!r.to_string().is_empty());
        }
        assert_eq!(Reason::Released { by: a }.kind(), "release");
        assert!(Reason::Released { by: a }.to_string().contains("released"));
    }
}
