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
    verify_at(secret, headers, body, tolerance, SystemTime::now())
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
}
