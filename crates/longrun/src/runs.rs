//! Listing runs: `GET /_runs` (spec §13.4), one page per call, newest first.

use longrun_proto::{RunId, State};
use serde::Deserialize;

use crate::client::error_from;
use crate::{Client, Error, Result, Run};

/// What [`Client::list_runs`] asks for; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListRuns {
    /// Only runs of this object.
    pub object: Option<String>,
    /// Only runs in this state: `queued`, `running`, `success`, `error`, `canceled`, or
    /// `active` (queued or running) or `ended` (a terminal state). The server checks it (an
    /// `InvalidArgument` for anything else).
    pub state: Option<String>,
    /// Runs per page, 1 to 1000 (the server's default is 50; more counts as 1000).
    pub limit: Option<u32>,
    /// The [`RunPage::next_page_token`] of the page before, with the same `object` and
    /// `state`.
    pub page_token: Option<String>,
}

/// One page of runs.
#[derive(Debug, Clone)]
pub struct RunPage {
    pub runs: Vec<ListedRun>,
    /// Where the next page starts (put it in [`ListRuns::page_token`]); `None` on the last.
    pub next_page_token: Option<String>,
}

/// A run as listed.
#[derive(Debug, Clone)]
pub struct ListedRun {
    /// The handle to follow, wait on or cancel it with this client.
    pub run: Run,
    pub state: State,
    /// When it was created and when it ended (`None` while active), RFC 3339 in UTC.
    pub created: String,
    pub ended: Option<String>,
    /// Its tenant, when an admin lists the runs of a server with tenants.
    pub tenant: Option<String>,
}

#[derive(Deserialize)]
struct Page {
    runs: Vec<Listed>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct Listed {
    object: String,
    id: RunId,
    state: State,
    created: String,
    ended: Option<String>,
    tenant: Option<String>,
}

impl ListRuns {
    /// A runs-list query as data, for bindings (as [`SubmitOptions`] are): a JSON object whose
    /// members are all optional (null is unset), an unknown one `InvalidArgument`:
    /// `object`, `state`, `limit`, `page_token` / `pageToken`.
    ///
    /// [`SubmitOptions`]: crate::SubmitOptions
    pub fn from_json(json: &str) -> Result<Self> {
        Self::from_value(crate::client::options_json(json, "runs list options")?)
    }

    /// [`from_json`](Self::from_json) of a JSON value (`null` is no options).
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        use crate::client::{Group, Member, members, put};
        let mut query = ListRuns::default();
        if value.is_null() {
            return Ok(query);
        }
        for (name, value) in members(value, "runs list options")? {
            if value.is_null() {
                continue;
            }
            let m = Member {
                options: "runs list option",
                group: Group::Top,
                name: &name,
                value,
            };
            let label = m.label();
            match name.as_str() {
                "object" => put(&mut query.object, label, m.text()?),
                "state" => put(&mut query.state, label, m.text()?),
                "limit" => put(&mut query.limit, label, m.count()?),
                "page_token" | "pageToken" => put(&mut query.page_token, label, m.text()?),
                _ => Err(Error::invalid(format!(
                    "{name:?} is not a runs list option"
                ))),
            }?;
        }
        Ok(query)
    }
}

impl Client {
    /// One page of the runs this client's token sees, newest first (`GET /_runs`). Follow
    /// `next_page_token` for the next: pages never repeat a run, and a run created while
    /// paging shows on the first page only.
    pub async fn list_runs(&self, query: &ListRuns) -> Result<RunPage> {
        let mut url = self
            .inner
            .base
            .join("_runs")
            .map_err(|e| Error::invalid(e.to_string()))?;
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(object) = &query.object {
                pairs.append_pair("object", object);
            }
            if let Some(state) = &query.state {
                pairs.append_pair("state", state);
            }
            if let Some(limit) = query.limit {
                pairs.append_pair("limit", &limit.to_string());
            }
            if let Some(token) = &query.page_token {
                pairs.append_pair("page_token", token);
            }
        }
        let req = self
            .inner
            .http
            .get(self.inner.wire(&url))
            .header(reqwest::header::ACCEPT, longrun_proto::header::JSON);
        let what = "listing runs";
        let body = self
            .inner
            .exchange(what, async {
                let res = self.inner.send(req, what).await?;
                if res.status().as_u16() != 200 {
                    return Err(error_from(res, "the runs list").await);
                }
                res.bytes().await
            })
            .await?;
        let page: Page = serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("the runs list is not a page of runs: {e}")))?;
        let runs = page
            .runs
            .into_iter()
            .map(|r| {
                Ok(ListedRun {
                    run: Run::at(&self.inner.base, &r.object, &r.id.to_string())?,
                    state: r.state,
                    created: r.created,
                    ended: r.ended,
                    tenant: r.tenant,
                })
            })
            .collect::<Result<_>>()?;
        Ok(RunPage {
            runs,
            next_page_token: page.next_page_token,
        })
    }
}
