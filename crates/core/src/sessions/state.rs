//! The session state machine: INITIALIZING → INITIALIZED → ACTIVE → CLOSED.

use std::fmt::Write;

/// The states of a session record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Initializing,
    Initialized,
    Active,
    Closed,
}

impl State {
    pub const ALL: [State; 4] = [State::Initializing, State::Initialized, State::Active, State::Closed];

    pub fn name(self) -> &'static str {
        match self {
            State::Initializing => "INITIALIZING",
            State::Initialized => "INITIALIZED",
            State::Active => "ACTIVE",
            State::Closed => "CLOSED",
        }
    }

    pub fn parse(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether a record in `self` may move to `to`. Staying ACTIVE is allowed (it records
    /// activity); nothing leaves CLOSED.
    pub fn may_become(self, to: State) -> bool {
        use State::{Active, Closed, Initialized, Initializing};
        matches!(
            (self, to),
            (Initializing, Initialized)
                | (Initialized | Active, Active)
                | (Initializing | Initialized | Active, Closed)
        )
    }
}

/// `allowed[from]` as a Lua table literal, generated from [`State::may_become`] so the
/// scripts and the Rust rules cannot drift apart.
pub(crate) fn lua_rules() -> String {
    let mut out = String::from("{");
    for from in State::ALL {
        let _ = write!(out, "{}={{", from.name());
        for to in State::ALL.into_iter().filter(|to| from.may_become(*to)) {
            let _ = write!(out, "{}=true,", to.name());
        }
        out.push_str("},");
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_state_machine() {
        use State::*;
        assert!(Initializing.may_become(Initialized));
        assert!(Initialized.may_become(Active));
        assert!(Active.may_become(Active));
        for from in [Initializing, Initialized, Active] {
            assert!(from.may_become(Closed));
        }
        for to in State::ALL {
            assert!(!Closed.may_become(to), "nothing leaves CLOSED ({to:?})");
        }
        assert!(!Initializing.may_become(Active), "no skipping INITIALIZED");
        assert!(!Active.may_become(Initialized), "no going back");
    }

    #[test]
    fn lua_rules_mirror_the_rust_rules() {
        let rules = lua_rules();
        assert!(rules.contains("INITIALIZING={INITIALIZED=true,CLOSED=true,}"));
        assert!(rules.contains("CLOSED={}"));
        assert!(rules.contains("ACTIVE={ACTIVE=true,CLOSED=true,}"));
    }

    #[test]
    fn states_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.name()), Some(s));
        }
        assert_eq!(State::parse("closed"), None);
    }
}
