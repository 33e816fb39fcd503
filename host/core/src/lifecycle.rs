//! Lifecycle state machines: one transition function each, tested for every state × event.

use serde::{Deserialize, Serialize};

/// A transition the state machine does not allow. Callers turn it into
/// `state.invalid_transition` with their own wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTransition {
    pub from: &'static str,
    pub event: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SandboxState {
    Pending,
    Creating,
    Ready,
    Stopping,
    Stopped,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxEvent {
    /// A driver began preparing the sandbox (pull, rootfs, network).
    LaunchBegan,
    /// The process is running.
    Started,
    /// Preparing or starting failed.
    LaunchFailed,
    /// A caller asked to stop.
    StopRequested,
    /// The process ended; `clean` when it was asked to stop or exited 0.
    Exited { clean: bool },
}

impl SandboxState {
    pub const ALL: [SandboxState; 6] = [
        SandboxState::Pending,
        SandboxState::Creating,
        SandboxState::Ready,
        SandboxState::Stopping,
        SandboxState::Stopped,
        SandboxState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Pending => "pending",
            SandboxState::Creating => "creating",
            SandboxState::Ready => "ready",
            SandboxState::Stopping => "stopping",
            SandboxState::Stopped => "stopped",
            SandboxState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<SandboxState> {
        SandboxState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the sandbox has ended and holds no running process.
    pub fn is_terminal(self) -> bool {
        matches!(self, SandboxState::Stopped | SandboxState::Failed)
    }

    pub fn on(self, event: SandboxEvent) -> Result<SandboxState, InvalidTransition> {
        use SandboxEvent as E;
        use SandboxState as S;
        let next = match (self, event) {
            (S::Pending, E::LaunchBegan) => S::Creating,
            (S::Creating, E::Started) => S::Ready,
            (S::Pending | S::Creating, E::LaunchFailed) => S::Failed,
            // Nothing runs yet: stopping a pending sandbox ends it at once.
            (S::Pending, E::StopRequested) => S::Stopped,
            (S::Creating | S::Ready | S::Stopping, E::StopRequested) => S::Stopping,
            // Stopping what already ended is a no-op, so retries are safe.
            (S::Stopped, E::StopRequested) => S::Stopped,
            (S::Failed, E::StopRequested) => S::Failed,
            (S::Stopping, E::Exited { .. }) => S::Stopped,
            (S::Ready, E::Exited { clean: true }) => S::Stopped,
            (S::Ready | S::Creating, E::Exited { clean: false }) => S::Failed,
            (S::Creating, E::Exited { clean: true }) => S::Stopped,
            (from, event) => {
                return Err(InvalidTransition {
                    from: from.as_str(),
                    event: event_name(event),
                })
            }
        };
        Ok(next)
    }
}

fn event_name(e: SandboxEvent) -> &'static str {
    match e {
        SandboxEvent::LaunchBegan => "launchBegan",
        SandboxEvent::Started => "started",
        SandboxEvent::LaunchFailed => "launchFailed",
        SandboxEvent::StopRequested => "stopRequested",
        SandboxEvent::Exited { .. } => "exited",
    }
}

/// What the caller wants a service to be doing (set by start/stop/restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DesiredRunState {
    Running,
    Stopped,
}

impl DesiredRunState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredRunState::Running => "running",
            DesiredRunState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ServiceState {
    Declared,
    Stopped,
    Starting,
    Running,
    Stopping,
    Failed,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Declared => "declared",
            ServiceState::Stopped => "stopped",
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Stopping => "stopping",
            ServiceState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SessionState {
    Open,
    Closed,
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    Close,
    Expire,
}

impl SessionState {
    pub const ALL: [SessionState; 3] = [
        SessionState::Open,
        SessionState::Closed,
        SessionState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Open => "open",
            SessionState::Closed => "closed",
            SessionState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<SessionState> {
        SessionState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn on(self, event: SessionEvent) -> Result<SessionState, InvalidTransition> {
        match (self, event) {
            (SessionState::Open, SessionEvent::Close) => Ok(SessionState::Closed),
            (SessionState::Open, SessionEvent::Expire) => Ok(SessionState::Expired),
            (from, event) => Err(InvalidTransition {
                from: from.as_str(),
                event: match event {
                    SessionEvent::Close => "close",
                    SessionEvent::Expire => "expire",
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SandboxEvent as E;
    use SandboxState as S;

    #[test]
    fn sandbox_transitions_for_every_state_and_event() {
        let events = [
            E::LaunchBegan,
            E::Started,
            E::LaunchFailed,
            E::StopRequested,
            E::Exited { clean: true },
            E::Exited { clean: false },
        ];
        // Rows: states in S::ALL order; columns: events in the order above. None = rejected.
        let table: [[Option<S>; 6]; 6] = [
            [
                Some(S::Creating),
                None,
                Some(S::Failed),
                Some(S::Stopped),
                None,
                None,
            ],
            [
                None,
                Some(S::Ready),
                Some(S::Failed),
                Some(S::Stopping),
                Some(S::Stopped),
                Some(S::Failed),
            ],
            [
                None,
                None,
                None,
                Some(S::Stopping),
                Some(S::Stopped),
                Some(S::Failed),
            ],
            [
                None,
                None,
                None,
                Some(S::Stopping),
                Some(S::Stopped),
                Some(S::Stopped),
            ],
            [None, None, None, Some(S::Stopped), None, None],
            [None, None, None, Some(S::Failed), None, None],
        ];
        for (row, state) in S::ALL.into_iter().enumerate() {
            for (col, event) in events.into_iter().enumerate() {
                assert_eq!(
                    state.on(event).ok(),
                    table[row][col],
                    "{state:?} on {event:?}"
                );
            }
        }
    }

    #[test]
    fn session_transitions_for_every_state_and_event() {
        use SessionEvent::*;
        use SessionState::*;
        assert_eq!(Open.on(Close), Ok(Closed));
        assert_eq!(Open.on(Expire), Ok(Expired));
        for s in [Closed, Expired] {
            assert!(s.on(Close).is_err());
            assert!(s.on(Expire).is_err());
        }
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()), Some(s));
        }
        for s in SessionState::ALL {
            assert_eq!(SessionState::parse(s.as_str()), Some(s));
        }
        assert_eq!(S::parse("running"), None);
    }
}
