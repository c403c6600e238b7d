//! Control requests, each answered from here: status by a snapshot the loop takes and
//! the status thread renders (`snapshot`), a reload in two steps (`upgrade`: the
//! binary on disk checks the config first), and promote, demote, resume, restart and
//! keepalived's notifications on the loop itself.

use std::time::{Duration, Instant};

use super::{snapshot::Renderer, Agent, Exit};
use crate::{
    control::{Request, Response},
    driver::Driver,
    state::State,
};

/// Where a request's answer goes.
pub(super) type Reply = tokio::sync::oneshot::Sender<Response>;

impl Agent {
    /// Answers one control request, now or (status, reload) when it is ready.
    pub(super) fn request(&mut self, req: Request, reply: Reply, renderer: &Renderer) {
        let now = Instant::now();
        let named = |this: &Self, g: &str| this.group_index(g);
        let resp = 'answer: {
            match req {
                // The loop copies its part; the maps are read on another thread.
                Request::Status => {
                    let _ = renderer.send((self.snapshot(), reply));
                    return;
                }
                Request::Reload => {
                    self.begin_reload(Some(reply));
                    return;
                }
                Request::Promote { group } => {
                    let gi = match named(self, &group) {
                        Ok(gi) => gi,
                        Err(e) => break 'answer Response::error(e),
                    };
                    let actions = self.groups[gi].driver.promote(now);
                    let res = self.carry_out(gi, actions);
                    match res {
                        Ok(()) => Response::ok(format!(
                            "group {group} is {}",
                            self.groups[gi].state.as_str()
                        )),
                        Err(e) => Response::error(format!("{e:#}")),
                    }
                }
                Request::Demote { group, forward_to } => {
                    let gi = match named(self, &group) {
                        Ok(gi) => gi,
                        Err(e) => break 'answer Response::error(e),
                    };
                    if let Some(m) = forward_to {
                        if !m.is_unicast() {
                            break 'answer Response::error(format!(
                                "forward_to {m} is not a unicast MAC"
                            ));
                        }
                    }
                    let actions = self.groups[gi].driver.demote(forward_to, now);
                    let res = self.carry_out(gi, actions);
                    let g = &self.groups[gi];
                    match res {
                    Ok(()) if g.state == State::Active => Response::ok(format!(
                        "group {group} is handing over: serving until a standby takes over, then forwarding to it"
                    )),
                    Ok(()) => Response::ok(match g.forward_to() {
                        Some(m) => format!("group {group} is standby, forwarding to {m}"),
                        None => format!("group {group} is standby"),
                    }),
                    Err(e) => Response::error(format!("{e:#}")),
                }
                }
                Request::Resume { group } => {
                    let gi = match named(self, &group) {
                        Ok(gi) => gi,
                        Err(e) => break 'answer Response::error(e),
                    };
                    match self.groups[gi].election_mut() {
                        Some(e) => {
                            let actions = e.resume(now);
                            self.apply(gi, actions);
                            Response::ok(format!("group {group} is back under the election"))
                        }
                        None => Response::error(format!(
                            "group {group} is not elected (no peers); nothing to resume"
                        )),
                    }
                }
                Request::Notify {
                    kind,
                    name,
                    state,
                    priority,
                } => self.notify(&kind, &name, &state, priority),
                Request::Restart { hold_ms } => {
                    if self.dp.pin_dir().is_none() {
                        break 'answer Response::error(
                        "the data plane is not pinned (no bpf filesystem): a restart would interrupt it; \
                         mount bpffs or set node.pin_dir, or stop the agent instead",
                    );
                    }
                    if !(100..=60_000).contains(&hold_ms) {
                        break 'answer Response::error(format!(
                            "hold_ms {hold_ms} is out of range 100..=60000"
                        ));
                    }
                    let hold = Duration::from_millis(hold_ms as u64);
                    // Peers hold from now on: no gap in which a standby could take over.
                    self.prepare_restart(hold);
                    self.exit = Some(Exit::Restart { hold });
                    Response::ok(format!(
                    "exiting for a restart: the data plane keeps serving and peers hold for {hold_ms} ms; start the agent again"
                ))
                }
            }
        };
        let _ = reply.send(resp);
    }

    /// Before exiting for a restart: peers hold, then leases cover the gap (never
    /// past the hold the peers were told of), pins stay.
    pub(super) fn prepare_restart(&mut self, hold: Duration) {
        for gi in 0..self.groups.len() {
            if self.groups[gi].state == State::Active && self.groups[gi].election().is_some() {
                self.send_hold(gi, hold);
            }
            self.hold_leases(gi, hold);
        }
    }

    /// keepalived's notify: `TYPE NAME STATE [PRIORITY]`.
    pub(super) fn notify(
        &mut self,
        kind: &str,
        name: &str,
        state: &str,
        priority: Option<u8>,
    ) -> Response {
        if !matches!(kind, "INSTANCE" | "GROUP") {
            return Response::error(format!(
                "unknown notify type `{kind}` (expected INSTANCE or GROUP)"
            ));
        }
        let Some(gi) = self
            .groups
            .iter()
            .position(|g| g.cfg.keepalived_instance.as_deref() == Some(name))
        else {
            return Response::error(format!("no group has keepalived_instance = \"{name}\""));
        };
        let g = &self.groups[gi];
        let Driver::Keepalived(k) = &g.driver else {
            return Response::error(format!("group {} is not driven by keepalived", g.cfg.name));
        };
        let unhealthy = (!g.healthy()).then(|| g.health_detail());
        let res = match k.notify(kind, name, state, priority, unhealthy) {
            Ok(actions) => self.carry_out(gi, actions),
            Err(e) => return Response::error(format!("group {}: {e}", g.cfg.name)),
        };
        match res {
            Ok(()) => Response::ok(format!(
                "group {} is {}",
                self.groups[gi].cfg.name,
                self.groups[gi].state.as_str()
            )),
            Err(e) => Response::error(format!("{e:#}")),
        }
    }
}
