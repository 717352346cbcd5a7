//! The receiving side of response hooks (spec §26): check that a delivery was signed by a
//! server holding the hook secret, and is recent.
//!
//! ```
//! # let (secret, body) = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", br#"{"test": 2432232314}"#);
//! let headers = [
//!     ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
//!     ("webhook-timestamp", "1614265330"),
//!     ("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
//! ];
//! let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1614265330);
//! longrun::webhook::verify_at(secret, headers, body, longrun::webhook::TOLERANCE, at).unwrap();
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use longrun_proto::webhook as wh;

/// How far a delivery's `webhook-timestamp` may be from now (either way), as Standard
/// Webhooks recommends: older deliveries are refused as replays.
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Which check of a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The secret is not `whsec_` and base64.
    #[error("the hook secret is not valid: {0}")]
    Secret(String),
    /// A header is missing (its name).
    #[error("the delivery has no {0} header")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not a number of seconds.
    #[error("webhook-timestamp is not a Unix time in seconds")]
    InvalidTimestamp,
    /// The timestamp is further from now than the tolerance (a replay, or a wrong clock).
    #[error("the delivery's timestamp is {0:?} away from now, beyond the tolerance")]
    Expired(Duration),
    /// No signature of the header matches the body under this secret.
    #[error("no signature matches (another secret, or the body was changed)")]
    Mismatch,
}

/// Verify a delivery now: `headers` are its header names and values (names in any case),
/// `body` its bytes as received. See [`verify_at`].
pub fn verify<'a>(
    secret: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
    tolerance: Duration,
) -> Result<(), VerifyError> {
    verify_at(secret, headers, body, tolerance, now())
}

/// The time now. `SystemTime::now` panics on wasm32-unknown-unknown (it has no clock), so the
/// browser build asks JavaScript's `Date`.
fn now() -> SystemTime {
    #[cfg(target_arch = "wasm32")]
    {
        UNIX_EPOCH + Duration::from_secs_f64(js_sys::Date::now().max(0.0) / 1000.0)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        SystemTime::now()
    }
}

/// Verify a delivery as of `now`: the secret decodes, `webhook-id`, `webhook-timestamp` and
/// `webhook-signature` are present, the timestamp is within `tolerance` of `now`, and one of
/// the signature's space-separated `v1,` entries is the HMAC-SHA256 of
/// `id.timestamp.body` (compared in constant time).
pub fn verify_at<'a>(
    secret: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
    tolerance: Duration,
    now: SystemTime,
) -> Result<(), VerifyError> {
    let key = wh::secret_key(secret).map_err(VerifyError::Secret)?;
    let (mut id, mut timestamp, mut signature) = (None, None, None);
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(wh::WEBHOOK_ID) {
            id = Some(value);
        } else if name.eq_ignore_ascii_case(wh::WEBHOOK_TIMESTAMP) {
            timestamp = Some(value);
        } else if name.eq_ignore_ascii_case(wh::WEBHOOK_SIGNATURE) {
            signature = Some(value);
        }
    }
    let id = id.ok_or(VerifyError::MissingHeader(wh::WEBHOOK_ID))?;
    let timestamp = timestamp.ok_or(VerifyError::MissingHeader(wh::WEBHOOK_TIMESTAMP))?;
    let signature = signature.ok_or(VerifyError::MissingHeader(wh::WEBHOOK_SIGNATURE))?;
    let seconds: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::InvalidTimestamp)?;
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let skew = Duration::from_secs(now_s.abs_diff(seconds));
    if skew > tolerance {
        return Err(VerifyError::Expired(skew));
    }
    if signature
        .split(' ')
        .any(|entry| wh::matches(&key, id, seconds, body, entry))
    {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

impl From<VerifyError> for crate::Error {
    /// A bad secret is the caller's argument (`InvalidArgument`); every other failed check
    /// rejects the delivery (`WebhookRejected`).
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Secret(message) => {
                crate::Error::invalid(format!("the hook secret is not valid: {message}"))
            }
            other => crate::Error::WebhookRejected(other),
        }
    }
}

/// [`verify`] for bindings, which hand the headers over as they have them, as JSON: an
/// object of names to a value or a list of values (Node's `IncomingMessage.headers`, Go's
/// `http.Header`, a Python dict), or a list of `[name, value]` pairs (Python's
/// `headers.items()`, a fetch `Headers`' entries). Repeated values of one header are joined
/// with a space (how `webhook-signature` lists several signatures). `tolerance` `None` is
/// [`TOLERANCE`]. The one place that reads headers for every SDK.
pub fn verify_json(
    secret: &str,
    headers: &serde_json::Value,
    body: &[u8],
    tolerance: Option<Duration>,
) -> crate::Result<()> {
    use serde_json::Value;
    let bad = || {
        crate::Error::invalid(
            "webhook headers are an object of names to strings (or lists of strings), or a \
             list of [name, value] pairs",
        )
    };
    let text = |value: &Value| -> crate::Result<String> {
        match value {
            Value::String(s) => Ok(s.clone()),
            Value::Array(values) => values
                .iter()
                .map(|v| v.as_str().ok_or_else(bad))
                .collect::<crate::Result<Vec<_>>>()
                .map(|values| values.join(" ")),
            _ => Err(bad()),
        }
    };
    let pairs: Vec<(String, String)> = match headers {
        Value::Object(map) => map
            .iter()
            .map(|(name, value)| Ok((name.clone(), text(value)?)))
            .collect::<crate::Result<_>>()?,
        Value::Array(pairs) => pairs
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(name), value]) => Ok((name.clone(), text(value)?)),
                _ => Err(bad()),
            })
            .collect::<crate::Result<_>>()?,
        _ => return Err(bad()),
    };
    let headers = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    verify(secret, headers, body, tolerance.unwrap_or(TOLERANCE)).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn signed(body: &[u8], at: i64) -> Vec<(String, String)> {
        let key = wh::secret_key(SECRET).unwrap();
        vec![
            ("Webhook-Id".into(), "msg_1".into()),
            ("webhook-timestamp".into(), at.to_string()),
            (
                "webhook-signature".into(),
                format!("v1,bm90IGl0 {}", wh::sign(&key, "msg_1", at, body)),
            ),
        ]
    }

    fn check(headers: &[(String, String)], body: &[u8], secret: &str) -> Result<(), VerifyError> {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let headers = headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        verify_at(secret, headers, body, TOLERANCE, now)
    }

    #[test]
    fn each_check_fails_by_its_own_error() {
        let body = br#"{"type":"run.ended"}"#;
        let headers = signed(body, 1_000_000 - 10);
        assert_eq!(check(&headers, body, SECRET), Ok(()));
        assert_eq!(
            check(&headers, br#"{"type":"run.event"}"#, SECRET),
            Err(VerifyError::Mismatch)
        );
        let other = "whsec_c2VjcmV0LW9mLWFub3RoZXItc2VydmVy";
        assert_eq!(check(&headers, body, other), Err(VerifyError::Mismatch));
        let old = signed(body, 1_000_000 - 301);
        assert_eq!(
            check(&old, body, SECRET),
            Err(VerifyError::Expired(Duration::from_secs(301)))
        );
        assert_eq!(
            check(&headers[..2], body, SECRET),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        assert!(matches!(
            check(&headers, body, "whsec_%%"),
            Err(VerifyError::Secret(_))
        ));
    }

    /// What bindings hand over: every shape of headers, each failure as its error kind.
    #[test]
    fn json_headers_in_every_shape_map_to_error_kinds() {
        use crate::ErrorKind;
        use serde_json::json;
        let body = br#"{"type":"run.ended"}"#;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let headers = signed(body, now);
        let object: serde_json::Map<_, _> =
            headers.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let lists: serde_json::Map<_, _> = headers
            .iter()
            .map(|(k, v)| (k.clone(), json!([v])))
            .collect();
        let pairs = json!(headers);
        for shape in [json!(object), json!(lists), pairs] {
            verify_json(SECRET, &shape, body, None).unwrap();
            let err = verify_json(SECRET, &shape, b"{}", None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::WebhookRejected, "{err}");
            let err = verify_json("whsec_%%", &shape, body, None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        }
        let stale = json!(signed(body, now - 3600));
        let err = verify_json(SECRET, &stale, body, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WebhookRejected, "{err}");
        assert!(err.to_string().contains("tolerance"), "{err}");
        let wide = Some(Duration::from_secs(7200));
        verify_json(SECRET, &stale, body, wide).unwrap();
        for bad in [json!("webhook-id: x"), json!([["a"]]), json!({"a": 1})] {
            let err = verify_json(SECRET, &bad, body, None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
    }
}
