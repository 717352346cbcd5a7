//! Signatures of response hooks (spec §26.4), as Standard Webhooks defines them: the secret
//! is `whsec_` and the base64 of its key bytes; a signature is `v1,` and the base64 of
//! HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`. The server signs with
//! [`sign`]; the client core verifies with the same function (`longrun::webhook::verify`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header names of a signed delivery.
pub const WEBHOOK_ID: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// The key bytes of a secret `whsec_<base64>` (the prefix may be left out), or why not.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = STANDARD
        .decode(encoded)
        .map_err(|e| format!("a hook secret is whsec_ and base64 ({e})"))?;
    if key.is_empty() {
        return Err("a hook secret must not be empty".into());
    }
    Ok(key)
}

/// The raw HMAC-SHA256 of `id.timestamp.body` under `key`.
pub fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` value for one attempt: `v1,<base64>`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(key, id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// Whether one `v1,<base64>` entry of a `webhook-signature` value (entries are separated by
/// spaces) is the signature of `id.timestamp.body`, compared in constant time.
pub fn matches(key: &[u8], id: &str, timestamp: i64, body: &[u8], entry: &str) -> bool {
    let Some(encoded) = entry.strip_prefix("v1,") else {
        return false;
    };
    let Ok(tag) = STANDARD.decode(encoded) else {
        return false;
    };
    mac(key, id, timestamp, body).verify_slice(&tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn the_standard_webhooks_example_signs_as_published() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(matches(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
            &sig
        ));
        assert!(!matches(&key, "msg_other", 1614265330, body, &sig));
        assert!(secret_key("whsec_!!").is_err());
    }
}
