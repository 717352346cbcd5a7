use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::{Event, RawEvent, State};

/// The progress convention: a `running` event whose value is an object may carry
/// `"progress"` (a number in 0..=1) and `"message"` (a string). SDKs and the CLI render these;
/// anything else in the value is the handler's own business.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Fraction done, clamped to 0..=1; `None` when the event only carries a message.
    pub fraction: Option<f64>,
    pub message: Option<String>,
}

impl RawEvent {
    /// The event's progress (spec §17): only a `running` event carries any, so a terminal
    /// event whose value looks like progress (`fail`'s `{"message": …}`) has none. Every SDK
    /// and the CLI ask this, not [`Progress::from_raw`], so the rule is applied once.
    pub fn progress(&self) -> Option<Progress> {
        match self.state {
            State::Running => Progress::from_raw(&self.value),
            _ => None,
        }
    }
}

impl Event {
    /// The same as [`RawEvent::progress`], for a parsed event.
    pub fn progress(&self) -> Option<Progress> {
        match self.state {
            State::Running => Progress::from_value(&self.value),
            _ => None,
        }
    }
}

/// A `progress` number as a fraction: finite, clamped to 0..=1.
fn fraction(f: f64) -> Option<f64> {
    f.is_finite().then(|| f.clamp(0.0, 1.0))
}

impl Progress {
    /// Read the convention out of a value; `None` when the value carries neither field. This
    /// does not know the event's state: for an event, use [`Event::progress`].
    pub fn from_value(value: &Value) -> Option<Progress> {
        let obj = value.as_object()?;
        let fraction = obj
            .get("progress")
            .and_then(Value::as_f64)
            .and_then(fraction);
        let message = obj
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned);
        (fraction.is_some() || message.is_some()).then_some(Progress { fraction, message })
    }

    /// The same as [`Progress::from_value`], read straight from JSON text (an SDK's raw event
    /// value) without building a `Value`. A value whose object repeats `progress` or `message`
    /// is read as carrying neither. For an event, use [`RawEvent::progress`].
    pub fn from_raw(value: &RawValue) -> Option<Progress> {
        #[derive(Deserialize)]
        struct Fields<'a> {
            #[serde(borrow, default)]
            progress: Option<&'a RawValue>,
            #[serde(borrow, default)]
            message: Option<&'a RawValue>,
        }
        // A derived struct also reads a JSON array (fields by position); the convention is
        // for objects only. A RawValue starts at its first byte, never at whitespace.
        if !value.get().starts_with('{') {
            return None;
        }
        let fields: Fields<'_> = serde_json::from_str(value.get()).ok()?;
        let fraction = fields
            .progress
            .and_then(|raw| serde_json::from_str::<f64>(raw.get()).ok())
            .and_then(fraction);
        let message = fields
            .message
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
        (fraction.is_some() || message.is_some()).then_some(Progress { fraction, message })
    }

    /// Build a value that follows the convention.
    pub fn to_value(fraction: Option<f64>, message: Option<&str>) -> Value {
        let mut obj = serde_json::Map::new();
        if let Some(f) = fraction {
            obj.insert("progress".into(), f.clamp(0.0, 1.0).into());
        }
        if let Some(m) = message {
            obj.insert("message".into(), m.into());
        }
        Value::Object(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_progress_and_message() {
        let p = Progress::from_value(&json!({"progress": 0.5, "message": "half", "i": 1})).unwrap();
        assert_eq!(p.fraction, Some(0.5));
        assert_eq!(p.message.as_deref(), Some("half"));
        assert_eq!(
            Progress::from_value(&json!({"progress": 7}))
                .unwrap()
                .fraction,
            Some(1.0)
        );
        assert_eq!(Progress::from_value(&json!({"other": 1})), None);
        assert_eq!(Progress::from_value(&json!("text")), None);
        assert_eq!(Progress::from_value(&json!({"progress": "x"})), None);
    }

    #[test]
    fn raw_values_read_the_same() {
        for value in [
            json!({"progress": 0.5, "message": "half", "i": 1}),
            json!({"progress": 7}),
            json!({"progress": -1, "message": null}),
            json!({"other": 1}),
            json!("text"),
            json!({"progress": "x"}),
            json!({"message": 3, "progress": [1]}),
            json!({"message": "only \"quoted\" text", "nested": {"progress": 1}}),
            json!([0.5]),
            json!(null),
        ] {
            let raw = serde_json::value::to_raw_value(&value).unwrap();
            assert_eq!(
                Progress::from_raw(&raw),
                Progress::from_value(&value),
                "{value}"
            );
        }
    }

    #[test]
    fn only_running_events_carry_progress() {
        let value = json!({"progress": 0.5, "message": "boom"});
        for state in State::ALL {
            let event = Event {
                id: 1,
                state,
                value: value.clone(),
            };
            let raw = RawEvent {
                id: 1,
                state,
                value: serde_json::value::to_raw_value(&value).unwrap(),
            };
            let expected = (state == State::Running).then(|| Progress {
                fraction: Some(0.5),
                message: Some("boom".into()),
            });
            assert_eq!(event.progress(), expected, "{state}");
            assert_eq!(raw.progress(), expected, "{state}");
        }
    }
}
