//! The object catalogue (spec §13.6): [`Client::objects`] and [`Client::object`] read what
//! a server's objects are and what arguments they take.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Client, Error, Result};

/// One object of a server, as `GET /_objects` describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub name: String,
    /// `builtin`, `exec`, `handler`, `service` or `composition` (a newer server may add
    /// kinds, so this stays text).
    pub kind: String,
    pub description: Option<String>,
    /// The JSON Schema the server checks a submit's arguments against (`{"type": "object"}`
    /// when the object declares none).
    pub args_schema: Value,
    /// Whether its runs have a byte stream (spec §27).
    pub stream: bool,
}

impl Client {
    /// Every object of the server, sorted by name.
    pub async fn objects(&self) -> Result<Vec<ObjectInfo>> {
        #[derive(Deserialize)]
        struct List {
            objects: Vec<ObjectInfo>,
        }
        let list: List = self.catalogue("_objects", "listing the objects").await?;
        Ok(list.objects)
    }

    /// One object; a `NotFound` error when the server has none of this name.
    pub async fn object(&self, name: &str) -> Result<ObjectInfo> {
        if name.is_empty() || name.contains(['/', '?', '#']) {
            return Err(Error::invalid(format!("{name:?} is not an object name")));
        }
        let what = format!("reading object {name}");
        self.catalogue(&format!("_objects/{name}"), &what).await
    }

    async fn catalogue<T: serde::de::DeserializeOwned>(&self, path: &str, what: &str) -> Result<T> {
        let url = self
            .inner
            .base
            .join(path)
            .map_err(|e| Error::invalid(format!("{path:?} is not a path: {e}")))?;
        let req = self.inner.http.get(self.inner.wire(&url));
        let res = self.inner.send(req, what).await?;
        if res.status().as_u16() != 200 {
            return Err(crate::client::error_from(res, what).await);
        }
        let body = self
            .inner
            .exchange(what, async { res.bytes().await })
            .await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("{what}: not an object catalogue answer: {e}")))
    }
}
