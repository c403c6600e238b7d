//! A group's state and an operator's override of its election: the words every room
//! shares (the election decides them, `reason` explains them, status shows them), kept
//! apart from all of those so that none imports another for them.

/// A group's state, VRRP-style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Init,
    Standby,
    Active,
    Fault,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Init => "init",
            State::Standby => "standby",
            State::Active => "active",
            State::Fault => "fault",
        }
    }
}

/// An operator's override of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    None,
    /// `vip promote`: active whatever the priorities (acts as priority 255).
    Active,
    /// `vip demote`: never takes over (acts as priority 0).
    Standby,
}
