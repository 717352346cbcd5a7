use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::RunId;

/// The state an event records. A run's log is `queued`, then any number of `running`, then
/// exactly one terminal state, after which nothing is appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Success,
    Error,
    Canceled,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Queued,
        State::Running,
        State::Success,
        State::Error,
        State::Canceled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, State::Success | State::Error | State::Canceled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Success => "success",
            State::Error => "error",
            State::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        // A match, not a search of `ALL`: this runs once per event a client reads.
        Some(match s {
            "queued" => State::Queued,
            "running" => State::Running,
            "success" => State::Success,
            "error" => State::Error,
            "canceled" => State::Canceled,
            _ => return None,
        })
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a run's log. `id` is the entry's index: dense, starting at 0, the same on
/// every transport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub state: State,
    pub value: Value,
}

/// An event whose value is still JSON text: what clients carry from the wire to a caller
/// that has its own JSON reader (an SDK's language, or `serde` into the caller's own type), so
/// the value is parsed once, by whoever reads it, and never into a [`Value`] on the way.
/// `value` is valid JSON by construction ([`RawValue`] cannot hold anything else).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawEvent {
    pub id: u64,
    pub state: State,
    pub value: Box<RawValue>,
}

impl RawEvent {
    /// The value parsed into `T` (a [`Value`], or a type of the caller's).
    pub fn value<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.value.get())
    }

    /// The same event with its value parsed. Fails only where `Value` has limits that the
    /// text does not (nesting deeper than serde_json's recursion limit).
    pub fn to_event(&self) -> serde_json::Result<Event> {
        Ok(Event {
            id: self.id,
            state: self.state,
            value: self.value()?,
        })
    }
}

impl PartialEq for RawEvent {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.state == other.state && self.value.get() == other.value.get()
    }
}

impl Event {
    /// Event 0 of every run, written at submit.
    pub fn queued() -> Self {
        Event {
            id: 0,
            state: State::Queued,
            value: Value::Null,
        }
    }
}

/// Why a run was canceled: the value of its `canceled` event is `{"reason": …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CancelReason {
    /// A client sent `DELETE`.
    Client,
    /// The object's time limit for a run passed.
    Deadline,
    /// The server shut down before the run ended.
    Shutdown,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Client => "client",
            CancelReason::Deadline => "deadline",
            CancelReason::Shutdown => "shutdown",
        }
    }

    /// The value of the `canceled` event.
    pub fn to_value(self) -> Value {
        serde_json::json!({ "reason": self.as_str() })
    }
}

/// A run as the server names it: the body of `201 Created` / `303 See Other` after a submit,
/// and of `202 Accepted` after a cancel. `url` is the run's path (`/{object}/{id}`), the same
/// as `Location`; clients resolve it against the base URL they used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRef {
    pub id: RunId,
    pub object: String,
    pub state: State,
    pub url: String,
}

/// The path of a run, relative to the server's base URL.
pub fn run_path(object: &str, id: &RunId) -> String {
    format!("/{object}/{id}")
}

impl RunRef {
    pub fn new(object: &str, id: RunId, state: State) -> Self {
        RunRef {
            url: run_path(object, &id),
            id,
            object: object.to_owned(),
            state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_shape() {
        let ev = Event::queued();
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"id":0,"state":"queued","value":null}"#
        );
        for st in State::ALL {
            assert_eq!(State::parse(st.as_str()), Some(st));
            assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
        }
        assert_eq!(State::parse("done"), None);
    }
}
