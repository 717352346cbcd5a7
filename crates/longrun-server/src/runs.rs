//! `GET /_runs` (spec §13.4): the runs a caller sees, newest first, filtered by object and
//! state, in pages.
//!
//! A page token (AIP-158) is the position of the last run of its page — its creation time
//! to the microsecond and its id — and a digest of what the page was asked for (object,
//! state, whose runs), in base64url. The next page is the runs strictly older than that
//! position, so pages never shift: a run created meanwhile is newer than every position
//! handed out and shows on the first page only. On memory and SQLite the registry holds
//! every run there is (SQLite reads them all back at start); on Postgres the shared
//! `longrun.runs` table answers, so every replica lists the same runs.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use longrun_proto::{ObjectName, ProblemKind, RunId, State as RunState};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Server;
use crate::auth::{Caller, Scope};
use crate::http::{ApiError, json_response};
use crate::run::Run;

/// How many runs a page holds unless `limit` says, and at most (more is taken as this many,
/// as AIP-158 says).
pub(crate) const DEFAULT_LIMIT: usize = 50;
pub(crate) const MAX_LIMIT: usize = 1000;

/// Which runs a listing takes: one object's, in some states.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub object: Option<String>,
    /// The `state` parameter as given, and the states it means (`None`: every state).
    pub state: Option<(String, &'static [RunState])>,
}

const ACTIVE: &[RunState] = &[RunState::Queued, RunState::Running];
const ENDED: &[RunState] = &[RunState::Success, RunState::Error, RunState::Canceled];

/// The states `state=` takes: one state, or `active` (queued or running) or `ended` (a
/// terminal state).
fn states(text: &str) -> Option<&'static [RunState]> {
    Some(match text {
        "queued" => &[RunState::Queued],
        "running" => &[RunState::Running],
        "success" => &[RunState::Success],
        "error" => &[RunState::Error],
        "canceled" => &[RunState::Canceled],
        "active" => ACTIVE,
        "ended" => ENDED,
        _ => return None,
    })
}

impl Filter {
    /// The run as listed, if the filter takes it.
    pub fn admit(&self, run: &Arc<Run>) -> Option<Listed> {
        if self.object.as_deref().is_some_and(|o| o != run.object) {
            return None;
        }
        let state = run.status().0;
        if !self.takes(state) {
            return None;
        }
        Some(Listed {
            object: run.object.clone(),
            id: run.id,
            state,
            created: run.created,
            ended: run.ended.get().copied().filter(|_| state.is_terminal()),
            tenant: run.tenant.clone(),
        })
    }

    pub fn takes(&self, state: RunState) -> bool {
        self.state
            .as_ref()
            .is_none_or(|(_, states)| states.contains(&state))
    }

    /// The states to ask a store for, by name (`None`: all).
    pub fn state_names(&self) -> Option<Vec<&'static str>> {
        let (_, states) = self.state.as_ref()?;
        Some(states.iter().map(|s| s.as_str()).collect())
    }
}

/// One run of a listing.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub object: String,
    pub id: RunId,
    pub state: RunState,
    pub created: SystemTime,
    pub ended: Option<SystemTime>,
    pub tenant: Option<Arc<str>>,
}

impl Listed {
    fn position(&self) -> (SystemTime, RunId) {
        (self.created, self.id)
    }

    fn to_json(&self, with_tenant: bool) -> Value {
        let rfc3339 = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
        let mut run = json!({
            "object": self.object,
            "id": self.id.to_string(),
            "url": longrun_proto::run_path(&self.object, &self.id),
            "state": self.state.as_str(),
            "created": rfc3339(self.created),
            "ended": self.ended.map(rfc3339),
        });
        if with_tenant {
            run["tenant"] = self.tenant.as_deref().into();
        }
        run
    }
}

/// What a request asked for.
struct Query {
    filter: Filter,
    limit: usize,
    after: Option<(SystemTime, RunId)>,
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemKind::InvalidQuery, detail)
}

fn invalid_token(detail: &str) -> ApiError {
    ApiError::new(
        ProblemKind::InvalidPageToken,
        format!("{detail}; start again without page_token"),
    )
}

/// The version byte of page tokens: a token of another layout is refused, not misread.
const TOKEN_VERSION: u8 = 1;
/// version, created (µs, big-endian), id, digest of the filter.
const TOKEN_BYTES: usize = 1 + 8 + 16 + 8;

/// What a token is bound to: the filter and whose runs, so a token is not reused for
/// another listing (AIP-158). The limit may change from page to page.
fn digest(filter: &Filter, caller: &Caller) -> [u8; 8] {
    let mut hash = Sha256::new();
    for part in [
        filter.object.as_deref().unwrap_or(""),
        filter.state.as_ref().map_or("", |(s, _)| s.as_str()),
        caller.only_tenant().unwrap_or(""),
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.finalize()[..8].try_into().expect("8 bytes")
}

fn token(position: (SystemTime, RunId), digest: [u8; 8]) -> String {
    let mut bytes = Vec::with_capacity(TOKEN_BYTES);
    bytes.push(TOKEN_VERSION);
    bytes.extend_from_slice(&crate::store::micros(position.0).to_be_bytes());
    bytes.extend_from_slice(position.1.as_uuid().as_bytes());
    bytes.extend_from_slice(&digest);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn position(token: &str, digest: [u8; 8]) -> Result<(SystemTime, RunId), ApiError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .filter(|b| b.len() == TOKEN_BYTES && b[0] == TOKEN_VERSION)
        .ok_or_else(|| invalid_token("page_token is not a token this server made"))?;
    if bytes[25..] != digest {
        return Err(invalid_token(
            "page_token was made for another object, state or caller",
        ));
    }
    let created = i64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
    let id = uuid::Uuid::from_slice(&bytes[9..25]).expect("16 bytes");
    Ok((crate::store::from_micros(created), RunId::from_uuid(id)))
}

fn parse(query: Option<&str>, caller: &Caller) -> Result<Query, ApiError> {
    let (mut object, mut state, mut limit, mut page_token) = (None, None, None, None);
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match &*key {
            "object" => &mut object,
            "state" => &mut state,
            "limit" => &mut limit,
            "page_token" => &mut page_token,
            // Parameters the route does not define are ignored (spec §3.1).
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(invalid(format!("give {key} once")));
        }
    }
    if let Some(name) = &object {
        if ObjectName::new(name.as_str()).is_err() {
            return Err(invalid(format!("object={name:?} is not an object name")));
        }
    }
    let state = match state {
        None => None,
        Some(text) => match states(&text) {
            Some(states) => Some((text, states)),
            None => {
                return Err(invalid(format!(
                    "state={text:?} is not a state: queued, running, success, error, \
                     canceled, active or ended"
                )));
            }
        },
    };
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<u64>() {
            Ok(n) if n > 0 && text.bytes().all(|b| b.is_ascii_digit()) => {
                n.min(MAX_LIMIT as u64) as usize
            }
            _ => {
                return Err(invalid(format!(
                    "limit={text:?} is not a number of runs from 1 to {MAX_LIMIT}"
                )));
            }
        },
    };
    let filter = Filter { object, state };
    let after = match page_token.filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(position(&t, digest(&filter, caller))?),
    };
    Ok(Query {
        filter,
        limit,
        after,
    })
}

/// `GET /_runs?object=&state=&limit=&page_token=`.
pub(crate) async fn list(
    caller: Caller,
    State(server): State<Server>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read, "")?;
    let q = parse(query.as_deref(), &caller)?;
    let mut runs = match server.registry.shared() {
        Some(pg) => pg
            .list_runs(&q.filter, caller.only_tenant(), q.after, q.limit + 1)
            .await
            .map_err(crate::http::store_unavailable)?,
        None => server
            .registry
            .list(&server.config, &caller, &q.filter, q.after, q.limit),
    };
    let next = (runs.len() > q.limit).then(|| {
        runs.truncate(q.limit);
        let last = runs.last().expect("a full page");
        token(last.position(), digest(&q.filter, &caller))
    });
    let with_tenant = caller.is_admin() && server.auth().is_some();
    let mut body = json!({
        "runs": runs.iter().map(|r| r.to_json(with_tenant)).collect::<Vec<_>>(),
    });
    if let Some(next) = next {
        body["next_page_token"] = next.into();
    }
    Ok(json_response(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_gives_back_its_position_for_its_own_filter_only() {
        let caller = Caller::server();
        let filter = Filter {
            object: Some("count".into()),
            state: None,
        };
        let at = (
            crate::store::from_micros(1_767_225_600_123_456),
            RunId::parse("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap(),
        );
        let t = token(at, digest(&filter, &caller));
        assert_eq!(position(&t, digest(&filter, &caller)).unwrap(), at);
        let other = Filter {
            object: Some("echo".into()),
            state: None,
        };
        assert!(position(&t, digest(&other, &caller)).is_err());
        for garbage in ["", "x", "!!!!", &t[1..], &format!("{t}AA")] {
            assert!(
                position(garbage, digest(&filter, &caller)).is_err(),
                "{garbage}"
            );
        }
    }

    #[test]
    fn limits_above_the_maximum_are_the_maximum() {
        let caller = Caller::server();
        assert_eq!(parse(None, &caller).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(parse(Some("limit=5000"), &caller).unwrap().limit, MAX_LIMIT);
        assert_eq!(parse(Some("limit=7"), &caller).unwrap().limit, 7);
        for bad in [
            "limit=0",
            "limit=-1",
            "limit=",
            "limit=1e3",
            "limit=+5",
            "limit=1&limit=2",
        ] {
            assert!(parse(Some(bad), &caller).is_err(), "{bad}");
        }
    }
}
