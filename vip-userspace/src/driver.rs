//! What moves a group between its roles: one runtime per mode, none doing I/O, each
//! returning the same `Action`s that the agent carries out. A group is driven by the
//! built-in election (`Election`), by its configured role (`Static`), or by
//! keepalived's notifications (`Keepalived`).

use std::time::Instant;

use crate::{
    config::{Group, Role},
    election::{Action, Election},
    mac::Mac,
    reason::Reason,
};

/// A group's runtime, by mode.
#[derive(Debug)]
pub enum Driver {
    Elected(Box<Election>),
    Static(Static),
    Keepalived(Keepalived),
}

/// The configured role, held unless a health check fails or an operator overrides it.
#[derive(Debug, Clone)]
pub struct Static {
    pub role: Role,
    pub forward_to: Option<Mac>,
    /// Health checks are configured: an active group waits for their first results.
    pub checked: bool,
}

/// keepalived decides; we carry its word out (and refuse MASTER while unhealthy).
#[derive(Debug, Clone)]
pub struct Keepalived {
    pub forward_to: Option<Mac>,
}

impl Driver {
    /// The runtime of a non-elected group (an elected one is built with its params).
    pub fn for_group(g: &Group) -> Self {
        if g.keepalived_instance.is_some() {
            Driver::Keepalived(Keepalived {
                forward_to: g.forward_to,
            })
        } else {
            Driver::Static(Static {
                role: g.role,
                forward_to: g.forward_to,
                checked: g.track.interface || g.track.script.is_some() || g.track.tcp.is_some(),
            })
        }
    }

    pub fn election(&self) -> Option<&Election> {
        match self {
            Driver::Elected(e) => Some(e.as_ref()),
            _ => None,
        }
    }

    pub fn election_mut(&mut self) -> Option<&mut Election> {
        match self {
            Driver::Elected(e) => Some(e.as_mut()),
            _ => None,
        }
    }

    /// The first actions of a group. `was_active`: an adopted data plane served it
    /// (for an elected group: with a lease that still runs).
    pub fn start(&mut self, was_active: bool, now: Instant) -> Vec<Action> {
        match self {
            Driver::Elected(e) if was_active => {
                // A restart: the data plane keeps serving on the lease it has, which
                // we do not renew before the election has listened for the owner.
                let mut out = vec![Action::Listen {
                    reason: Reason::Resuming,
                }];
                out.extend(e.start_adopted(now));
                out
            }
            Driver::Elected(e) => {
                let mut out = vec![Action::StepDown {
                    forward_to: None,
                    reason: Reason::Electing,
                }];
                out.extend(e.start(now));
                out
            }
            Driver::Keepalived(_) if was_active => vec![Action::TakeOver {
                reason: Reason::Adopted,
            }],
            Driver::Keepalived(_) => vec![Action::StepDown {
                forward_to: None,
                reason: Reason::WaitingForKeepalived,
            }],
            Driver::Static(s) => match (s.role, s.checked) {
                (Role::Active, false) => vec![Action::TakeOver {
                    reason: Reason::Configured(Role::Active),
                }],
                (Role::Active, true) => vec![Action::Wait {
                    reason: Reason::WaitingForHealth,
                }],
                (Role::Standby, _) => vec![Action::StepDown {
                    forward_to: s.forward_to,
                    reason: Reason::Configured(Role::Standby),
                }],
            },
        }
    }

    /// The group's health changed (`complete`: every check has reported).
    pub fn health(
        &mut self,
        healthy: bool,
        complete: bool,
        reason: Reason,
        now: Instant,
    ) -> Vec<Action> {
        if let Driver::Elected(e) = self {
            return e.set_healthy(healthy, reason, now);
        }
        if !healthy {
            return vec![Action::Fault { reason }];
        }
        if !complete {
            return Vec::new();
        }
        match self {
            Driver::Static(s) if s.role == Role::Active => vec![Action::TakeOver { reason }],
            Driver::Static(Static { forward_to, .. })
            | Driver::Keepalived(Keepalived { forward_to }) => vec![Action::StepDown {
                forward_to: *forward_to,
                reason,
            }],
            Driver::Elected(_) => Vec::new(),
        }
    }

    /// `vip promote`.
    pub fn promote(&mut self, now: Instant) -> Vec<Action> {
        match self {
            Driver::Elected(e) => e.promote(now),
            _ => vec![Action::TakeOver {
                reason: Reason::Promoted,
            }],
        }
    }

    /// `vip demote [--forward-to MAC]`.
    pub fn demote(&mut self, forward_to: Option<Mac>, now: Instant) -> Vec<Action> {
        match self {
            Driver::Elected(e) => e.demote(forward_to, now),
            Driver::Static(Static { forward_to: f, .. })
            | Driver::Keepalived(Keepalived { forward_to: f }) => vec![Action::StepDown {
                forward_to: forward_to.or(*f),
                reason: Reason::Demoted,
            }],
        }
    }
}

impl Keepalived {
    /// keepalived's notify: `TYPE NAME STATE [PRIORITY]`; an error says why it is refused.
    pub fn notify(
        &self,
        kind: &str,
        name: &str,
        state: &str,
        priority: Option<u8>,
        unhealthy: Option<String>,
    ) -> Result<Vec<Action>, String> {
        if !matches!(kind, "INSTANCE" | "GROUP") {
            return Err(format!(
                "unknown notify type `{kind}` (expected INSTANCE or GROUP)"
            ));
        }
        let reason = Reason::Keepalived {
            kind: kind.into(),
            name: name.into(),
            state: state.into(),
            priority,
        };
        match state {
            "MASTER" => match unhealthy {
                Some(why) => Err(format!("the group is faulty ({why}); not taking over")),
                None => Ok(vec![Action::TakeOver { reason }]),
            },
            "BACKUP" | "STOP" => Ok(vec![Action::StepDown {
                forward_to: self.forward_to,
                reason,
            }]),
            "FAULT" => Ok(vec![Action::Fault { reason }]),
            other => Err(format!(
                "unknown keepalived state `{other}` (expected MASTER, BACKUP, FAULT or STOP)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(role: Role, checked: bool) -> Driver {
        Driver::Static(Static {
            role,
            forward_to: Some(Mac([2, 0, 0, 0, 0, 9])),
            checked,
        })
    }

    fn kinds(a: &[Action]) -> Vec<&'static str> {
        a.iter()
            .map(|a| match a {
                Action::TakeOver { .. } => "take",
                Action::StepDown { .. } => "step",
                Action::Fault { .. } => "fault",
                Action::Wait { .. } => "wait",
                _ => "other",
            })
            .collect()
    }

    fn health(ok: bool) -> Reason {
        let detail = String::from(if ok { "ok" } else { "failed" });
        if ok {
            Reason::Recovered {
                check: "track_script",
                detail,
            }
        } else {
            Reason::Health {
                check: "track_script",
                detail,
            }
        }
    }

    #[test]
    fn static_roles_start_and_follow_health() {
        let now = Instant::now();
        assert_eq!(
            kinds(&stat(Role::Active, false).start(false, now)),
            ["take"]
        );
        assert_eq!(kinds(&stat(Role::Active, true).start(false, now)), ["wait"]);
        assert_eq!(
            kinds(&stat(Role::Standby, false).start(true, now)),
            ["step"]
        );
        let mut d = stat(Role::Active, true);
        assert!(
            d.health(true, false, health(true), now).is_empty(),
            "waits for every check"
        );
        assert_eq!(kinds(&d.health(true, true, health(true), now)), ["take"]);
        assert_eq!(kinds(&d.health(false, true, health(false), now)), ["fault"]);
        let mut s = stat(Role::Standby, true);
        match &s.health(true, true, health(true), now)[..] {
            [Action::StepDown { forward_to, .. }] => assert!(forward_to.is_some()),
            other => panic!("{other:?}"),
        }
        match &s.demote(None, now)[..] {
            [Action::StepDown { forward_to, reason }] => {
                assert!(forward_to.is_some());
                assert_eq!(reason.kind(), "demote");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(kinds(&s.promote(now)), ["take"]);
    }

    #[test]
    fn keepalived_word_is_carried_out_and_bad_words_refused() {
        let k = Keepalived { forward_to: None };
        assert_eq!(
            kinds(
                &k.notify("INSTANCE", "VI_1", "MASTER", Some(100), None)
                    .unwrap()
            ),
            ["take"]
        );
        assert_eq!(
            kinds(&k.notify("GROUP", "g", "BACKUP", None, None).unwrap()),
            ["step"]
        );
        assert_eq!(
            kinds(&k.notify("INSTANCE", "VI_1", "FAULT", None, None).unwrap()),
            ["fault"]
        );
        assert!(k
            .notify(
                "INSTANCE",
                "VI_1",
                "MASTER",
                None,
                Some("track_script failing".into())
            )
            .unwrap_err()
            .contains("faulty"));
        assert!(k.notify("BOGUS", "VI_1", "MASTER", None, None).is_err());
        assert!(k.notify("INSTANCE", "VI_1", "SLEEPY", None, None).is_err());
        let now = Instant::now();
        let mut d = Driver::Keepalived(k);
        assert_eq!(kinds(&d.start(true, now)), ["take"]);
        assert_eq!(kinds(&d.start(false, now)), ["step"]);
        assert_eq!(kinds(&d.health(true, true, health(true), now)), ["step"]);
    }
}
