//! Tenants and tokens (`longrun serve --auth FILE`).
//!
//! The auth file names tenants; each has tokens, stored as SHA-256 hashes (never the token),
//! each with its scopes: `submit` (every object) or `submit:NAME` (one object), `read`
//! (follow, `HEAD`), `cancel`, `admin` (every tenant's runs). A request names its token in `Authorization:
//! Bearer …`; a run belongs to the tenant that submitted it and is invisible (404, on every
//! verb) to every other tenant but an admin. Without an auth file the server is open.

use std::collections::{BTreeSet, HashSet};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, header};
use longrun_proto::ProblemKind;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Server;
use crate::http::ApiError;

/// The largest auth file read, and the longest token looked at.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
const MAX_TOKEN_BYTES: usize = 256;

/// What a tenant may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Submit,
    Read,
    Cancel,
}

/// What one token allows, and for which tenant.
#[derive(Debug)]
pub struct Tenant {
    pub name: String,
    limits: Arc<TenantLimits>,
    /// `None`: every object; else these.
    submit: Option<BTreeSet<String>>,
    read: bool,
    cancel: bool,
    admin: bool,
}

impl Tenant {
    fn may(&self, scope: Scope, object: &str) -> bool {
        self.admin
            || match scope {
                Scope::Submit => self.submit.as_ref().is_none_or(|o| o.contains(object)),
                Scope::Read => self.read,
                Scope::Cancel => self.cancel,
            }
    }
}

/// The tenants and their tokens' hashes, as read from an auth file.
#[derive(Debug)]
pub struct Auth {
    tokens: Vec<([u8; 32], Arc<Tenant>)>,
    /// Each tenant's limits by name, for read tokens.
    tenants: std::collections::HashMap<String, Arc<TenantLimits>>,
    read_secret: [u8; 32],
    read_ttl: Duration,
}

/// How long a read token lasts unless the auth file says otherwise.
pub const READ_TOKEN_TTL: Duration = Duration::from_secs(3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tenant: Vec<TenantFile>,
    #[serde(default)]
    read_tokens: ReadTokensFile,
}

/// `[read_tokens]`: the key read tokens are signed with (shared by replicas; random per
/// process when absent) and how long one lasts.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReadTokensFile {
    secret: Option<String>,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    name: String,
    token: Vec<TokenFile>,
    #[serde(default)]
    limits: LimitsFile,
}

/// `limits = { submits_per_second = 5, submit_burst = 10, max_followers = 100 }`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    submits_per_second: Option<f64>,
    submit_burst: Option<u32>,
    max_followers: Option<usize>,
}

/// One tenant's limits in this process, shared by all its tokens.
struct TenantLimits {
    submits: Option<DefaultDirectRateLimiter>,
    followers: Option<(AtomicUsize, usize)>,
}

impl std::fmt::Debug for TenantLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLimits")
            .field("submits", &self.submits.is_some())
            .field("followers", &self.followers.as_ref().map(|(_, max)| max))
            .finish()
    }
}

impl LimitsFile {
    fn build(self, tenant: &str) -> Result<TenantLimits, String> {
        let submits = match self.submits_per_second {
            None => {
                if self.submit_burst.is_some() {
                    return Err(format!(
                        "tenant {tenant:?}: submit_burst needs submits_per_second"
                    ));
                }
                None
            }
            Some(rate) => {
                let period = (rate.is_finite() && rate > 0.0)
                    .then(|| Duration::try_from_secs_f64(1.0 / rate).ok())
                    .flatten()
                    .and_then(Quota::with_period)
                    .ok_or_else(|| {
                        format!("tenant {tenant:?}: submits_per_second must be more than 0")
                    })?;
                let burst = self
                    .submit_burst
                    .unwrap_or_else(|| rate.ceil().max(1.0) as u32);
                let burst = NonZeroU32::new(burst)
                    .ok_or_else(|| format!("tenant {tenant:?}: submit_burst must be at least 1"))?;
                Some(RateLimiter::direct(period.allow_burst(burst)))
            }
        };
        let followers = match self.max_followers {
            Some(0) => {
                return Err(format!(
                    "tenant {tenant:?}: max_followers must be more than 0"
                ));
            }
            Some(max) => Some((AtomicUsize::new(0), max)),
            None => None,
        };
        Ok(TenantLimits { submits, followers })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    hash: String,
    scopes: Vec<String>,
}

/// `sha256:` and the hash of a token in lowercase hex: what an auth file lists.
pub fn token_hash(token: &str) -> String {
    format!("sha256:{}", hex(&Sha256::digest(token.as_bytes())))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    unhex(text.strip_prefix("sha256:")?)?.try_into().ok()
}

/// A fresh token (`lrt_` and 256 random bits in hex) and the hash to paste into the file.
pub fn new_token() -> Result<(String, String), String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no random source: {e}"))?;
    let token = format!("lrt_{}", hex(&bytes));
    let hash = token_hash(&token);
    Ok((token, hash))
}

impl Auth {
    /// Parse and check an auth file's text: every tenant named once, every token hash well
    /// formed and listed once, every scope known.
    pub fn from_toml(text: &str) -> Result<Auth, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.tenant.is_empty() {
            return Err("no [[tenant]] is defined".into());
        }
        let mut names = HashSet::new();
        let mut seen = HashSet::new();
        let mut tokens = Vec::new();
        let mut tenants = std::collections::HashMap::new();
        for t in file.tenant {
            if t.name.is_empty() || !names.insert(t.name.clone()) {
                return Err(format!(
                    "tenant {:?}: every tenant needs a name of its own",
                    t.name
                ));
            }
            if t.token.is_empty() {
                return Err(format!(
                    "tenant {:?}: give it at least one [[tenant.token]]",
                    t.name
                ));
            }
            let limits = Arc::new(t.limits.build(&t.name)?);
            tenants.insert(t.name.clone(), limits.clone());
            for token in t.token {
                let Some(hash) = parse_hash(&token.hash) else {
                    return Err(format!(
                        "tenant {:?}: {:?} is not a token hash like sha256:<64 hex digits> \
                         (`longrun token new` prints one); the file never holds tokens",
                        t.name, token.hash
                    ));
                };
                if !seen.insert(hash) {
                    return Err(format!("tenant {:?}: a token hash is listed twice", t.name));
                }
                let grant = grant(&t.name, &token.scopes, limits.clone())?;
                tokens.push((hash, Arc::new(grant)));
            }
        }
        let read_secret = match &file.read_tokens.secret {
            Some(text) if text.len() >= 32 => Sha256::digest(text.as_bytes()).into(),
            Some(_) => {
                return Err("[read_tokens] secret must be at least 32 characters".into());
            }
            None => {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).map_err(|e| format!("no random source: {e}"))?;
                bytes
            }
        };
        let read_ttl = file.read_tokens.ttl.unwrap_or(READ_TOKEN_TTL);
        if read_ttl.is_zero() || read_ttl > Duration::from_secs(30 * 24 * 3600) {
            return Err("[read_tokens] ttl must be between 1s and 30days".into());
        }
        Ok(Auth {
            tokens,
            tenants,
            read_secret,
            read_ttl,
        })
    }
}

fn grant(tenant: &str, scopes: &[String], limits: Arc<TenantLimits>) -> Result<Tenant, String> {
    let mut grant = Tenant {
        name: tenant.to_owned(),
        limits,
        submit: Some(BTreeSet::new()),
        read: false,
        cancel: false,
        admin: false,
    };
    for scope in scopes {
        match scope.as_str() {
            "submit" => grant.submit = None,
            "read" => grant.read = true,
            "cancel" => grant.cancel = true,
            "admin" => grant.admin = true,
            other => match other.strip_prefix("submit:") {
                Some(object) if !object.is_empty() => {
                    if let Some(objects) = &mut grant.submit {
                        objects.insert(object.to_owned());
                    }
                }
                _ => {
                    return Err(format!(
                        "tenant {tenant:?}: unknown scope {other:?} (submit, submit:OBJECT, \
                         read, cancel, admin)"
                    ));
                }
            },
        }
    }
    Ok(grant)
}

impl Auth {
    /// Read an auth file (at most 1 MiB).
    pub fn load(path: &Path) -> Result<Auth, String> {
        let why = |e: String| format!("auth file {}: {e}", path.display());
        let size = std::fs::metadata(path)
            .map_err(|e| why(e.to_string()))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(why(format!(
                "{size} bytes; at most {MAX_FILE_BYTES} are read"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| why(e.to_string()))?;
        Auth::from_toml(&text).map_err(why)
    }

    fn read_signature(&self, path: &str, tenant: &str, expires: u64) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.read_secret).expect("any key size");
        mac.update(format!("{path}\n{tenant}\n{expires}").as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A read token for the run at `path` (`/{object}/{id}`) of `tenant`, and when it ends
    /// (seconds since the epoch).
    pub(crate) fn read_token(&self, path: &str, tenant: &str) -> (String, u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let expires = (now + self.read_ttl).as_secs();
        let sig = self.read_signature(path, tenant, expires);
        (
            format!("lrr_{expires}_{}_{}", hex(tenant.as_bytes()), hex(&sig)),
            expires,
        )
    }

    /// The tenant a read token for `path` was made for, if it is genuine and not expired.
    fn read_tenant(&self, token: &str, path: &str) -> Option<Arc<Tenant>> {
        let mut parts = token.strip_prefix("lrr_")?.splitn(3, '_');
        let expires: u64 = parts.next()?.parse().ok()?;
        let tenant = String::from_utf8(unhex(parts.next()?)?).ok()?;
        let sig = unhex(parts.next()?)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if expires <= now {
            return None;
        }
        let want = self.read_signature(path, &tenant, expires);
        if !bool::from(want.as_slice().ct_eq(&sig)) {
            return None;
        }
        let limits = self.tenants.get(&tenant)?.clone();
        Some(Arc::new(Tenant {
            name: tenant,
            limits,
            submit: Some(BTreeSet::new()),
            read: true,
            cancel: false,
            admin: false,
        }))
    }

    /// The tenant of a token. Every hash is compared, in constant time, whichever matches.
    fn tenant(&self, token: &str) -> Option<Arc<Tenant>> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (known, tenant) in &self.tokens {
            if bool::from(known.ct_eq(&hash)) {
                found = Some(tenant.clone());
            }
        }
        found
    }
}

/// Who is calling: a tenant, or anyone when the server has no auth file.
pub(crate) struct Caller(Option<Arc<Tenant>>);

impl Caller {
    /// 403 unless the caller may do `scope` (on `object`, for a submit).
    pub fn require(&self, scope: Scope, object: &str) -> Result<(), ApiError> {
        match &self.0 {
            Some(t) if !t.may(scope, object) => Err(ApiError::new(
                ProblemKind::Forbidden,
                match scope {
                    Scope::Submit => format!("tenant {:?} may not submit to {object:?}", t.name),
                    Scope::Read => format!("tenant {:?} may not read runs", t.name),
                    Scope::Cancel => format!("tenant {:?} may not cancel runs", t.name),
                },
            )),
            _ => Ok(()),
        }
    }

    /// 403 unless the caller has the admin scope (an open server lets everyone in).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        self.require_admin_for("manage worker nodes")
    }

    /// [`Caller::require_admin`], saying what the caller may not `do`.
    pub fn require_admin_for(&self, what: &str) -> Result<(), ApiError> {
        match &self.0 {
            Some(t) if !t.admin => Err(ApiError::new(
                ProblemKind::Forbidden,
                format!("tenant {:?} may not {what} (admin scope)", t.name),
            )),
            _ => Ok(()),
        }
    }

    /// 429 when the tenant submits faster than its rate allows; `Retry-After` says when the
    /// next one would be let in.
    pub fn admit_submit(&self) -> Result<(), ApiError> {
        let Some(limiter) = self.0.as_ref().and_then(|t| t.limits.submits.as_ref()) else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::new(
                ProblemKind::RateLimited,
                format!(
                    "tenant {:?} submits faster than its limit",
                    self.tenant_name()
                ),
            )
            .header(header::RETRY_AFTER, HeaderValue::from(secs.max(1)))
        })
    }

    /// A follower counted against the tenant's limit (given back when dropped), or 429.
    pub fn admit_follower(&self) -> Result<Option<TenantFollower>, ApiError> {
        let Some(limits) = self.0.as_ref().map(|t| &t.limits) else {
            return Ok(None);
        };
        let Some((count, max)) = &limits.followers else {
            return Ok(None);
        };
        if !crate::conn::take(count, *max) {
            return Err(ApiError::new(
                ProblemKind::RateLimited,
                format!(
                    "tenant {:?} has {max} followers, as many as it may",
                    self.tenant_name()
                ),
            )
            .header(header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        Ok(Some(TenantFollower(limits.clone())))
    }

    fn tenant_name(&self) -> &str {
        self.owner().unwrap_or_default()
    }

    /// The tenant a new run belongs to.
    pub fn owner(&self) -> Option<&str> {
        self.0.as_deref().map(|t| t.name.as_str())
    }

    /// The server itself, which sees every run (hooks resumed at start).
    pub fn server() -> Caller {
        Caller(None)
    }

    /// The tenant whose runs alone this caller sees; `None`: every run (an admin, or an
    /// open server).
    pub fn only_tenant(&self) -> Option<&str> {
        self.0
            .as_deref()
            .filter(|t| !t.admin)
            .map(|t| t.name.as_str())
    }

    /// A caller with the admin scope (not everyone on an open server).
    pub fn is_admin(&self) -> bool {
        self.0.as_deref().is_some_and(|t| t.admin)
    }

    /// Whether a run of `owner` exists for this caller.
    pub fn sees(&self, owner: Option<&str>) -> bool {
        match &self.0 {
            None => true,
            Some(t) => t.admin || owner == Some(t.name.as_str()),
        }
    }
}

/// One follower of a tenant with a follower limit; given back when dropped.
pub(crate) struct TenantFollower(Arc<TenantLimits>);

impl Drop for TenantFollower {
    fn drop(&mut self) {
        if let Some((count, _)) = &self.0.followers {
            count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// `access_token=` of a query.
fn access_token(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_BYTES)
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(ProblemKind::Unauthorized, detail).header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"longrun\""),
    )
}

impl FromRequestParts<Server> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, server: &Server) -> Result<Self, ApiError> {
        let Some(auth) = server.auth() else {
            return Ok(Caller(None));
        };
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            // A page's native EventSource cannot send headers: a read token for this very run
            // in the query lets it follow (GET and HEAD only).
            let read = matches!(parts.method, Method::GET | Method::HEAD)
                .then(|| access_token(parts.uri.query()?))
                .flatten();
            if let Some(token) = read {
                return match auth.read_tenant(&token, parts.uri.path()) {
                    Some(tenant) => Ok(Caller(Some(tenant))),
                    None => Err(unauthorized(
                        "the read token is not for this run, or it expired",
                    )),
                };
            }
            return Err(unauthorized("send a token: Authorization: Bearer <token>"));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_BYTES);
        match token.and_then(|t| auth.tenant(t)) {
            Some(tenant) => Ok(Caller(Some(tenant))),
            None => Err(unauthorized("the token is not known to this server")),
        }
    }
}
