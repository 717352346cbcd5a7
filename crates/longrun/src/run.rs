use std::fmt;

use longrun_proto::{ObjectName, RunId};
use url::Url;

use crate::{Error, Result};

/// A handle on a run: its object, id and absolute URL. The URL (plus a cursor) is the
/// portable resume token: a run submitted in one process or language can be followed,
/// cancelled or checked from another with [`Run::from_url`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Run {
    object: String,
    id: RunId,
    url: Url,
}

impl Run {
    /// The run `object`/`id` on the server at `base_url`.
    pub fn new(base_url: &str, object: &str, id: &str) -> Result<Run> {
        let base = crate::client::parse_base(base_url)?;
        Self::at(&base, object, id)
    }

    pub(crate) fn at(base: &Url, object: &str, id: &str) -> Result<Run> {
        ObjectName::new(object).map_err(|e| Error::invalid(e.to_string()))?;
        let id = RunId::parse(id).map_err(|e| Error::invalid(e.to_string()))?;
        let url = base
            .join(&format!("{object}/{id}"))
            .map_err(|e| Error::invalid(format!("cannot build the run URL: {e}")))?;
        Ok(Run {
            object: object.to_owned(),
            id,
            url,
        })
    }

    /// Rebuild a run from its URL, e.g. `http://host:8080/count/0f8fad5b-…`. The server's base
    /// URL is everything before the last two path segments; a query or fragment is ignored.
    pub fn from_url(url: &str) -> Result<Run> {
        let mut parsed = crate::client::parse_url(url)?;
        parsed.set_query(None);
        parsed.set_fragment(None);
        let segments: Vec<&str> = parsed
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).collect())
            .unwrap_or_default();
        let [.., object, id] = segments[..] else {
            return Err(Error::invalid(format!(
                "{url:?} is not a run URL: expected http(s)://host/…/OBJECT/RUN_ID"
            )));
        };
        let (object, id) = (object.to_owned(), id.to_owned());
        let base = parsed
            .join("..")
            .map_err(|e| Error::invalid(format!("{url:?}: {e}")))?;
        // `join("..")` from `/a/obj/id` gives `/a/`; from `/a/obj/id/` it gives `/a/obj/`.
        let base = if parsed.path().ends_with('/') {
            base.join("..")
                .map_err(|e| Error::invalid(format!("{url:?}: {e}")))?
        } else {
            base
        };
        Self::at(&base, &object, &id)
    }

    pub fn object(&self) -> &str {
        &self.object
    }

    pub fn id(&self) -> RunId {
        self.id
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The base URL of the run's server: its URL without `OBJECT/ID` (for a server on a unix
    /// socket, `unix:///PATH/`), what a [`Client`](crate::Client) for this run is made with.
    pub fn base_url(&self) -> Url {
        // `OBJECT/ID` was joined onto a base that ends with `/`: `..` takes both off.
        self.url.join("..").unwrap_or_else(|_| self.url.clone())
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    #[test]
    fn runs_round_trip_through_their_url() {
        for base in [
            "http://h:8080",
            "http://h:8080/",
            "https://h/api/v1",
            "https://h/api/v1/",
        ] {
            let run = Run::new(base, "count", ID).unwrap();
            assert!(
                run.url().as_str().ends_with(&format!("/count/{ID}")),
                "{run}"
            );
            assert_eq!(Run::from_url(run.url().as_str()).unwrap(), run);
            assert_eq!(Run::from_url(&format!("{run}/")).unwrap(), run);
            assert_eq!(
                run.base_url().as_str(),
                format!("{}/", base.trim_end_matches('/'))
            );
            assert_eq!(
                Run::from_url(&format!("{run}?last_event_id=3#x")).unwrap(),
                run
            );
        }
        assert_eq!(
            Run::new("https://h/api/v1", "count", ID)
                .unwrap()
                .url()
                .as_str(),
            format!("https://h/api/v1/count/{ID}")
        );
    }

    #[test]
    fn runs_on_a_unix_socket_are_paths_after_the_socket() {
        for base in [
            "unix:///run/longrun.sock",
            "unix:///run/longrun.sock/",
            "unix:/run/longrun.sock",
        ] {
            let run = Run::new(base, "count", ID).unwrap();
            assert_eq!(
                run.url().as_str(),
                format!("unix:///run/longrun.sock/count/{ID}")
            );
            assert_eq!(Run::from_url(run.url().as_str()).unwrap(), run);
            assert_eq!(
                Run::from_url(&format!("{run}?last_event_id=3")).unwrap(),
                run
            );
        }
        // A space in the socket's path is percent-encoded in the URL.
        let run = Run::new("unix:///tmp/my dir/l.sock", "count", ID).unwrap();
        assert_eq!(Run::from_url(run.url().as_str()).unwrap(), run);
        for bad in [
            format!("unix://host/l.sock/count/{ID}"),
            format!("unix:l.sock/count/{ID}"),
            "unix:///count".to_owned(),
        ] {
            let err = Run::from_url(&bad).unwrap_err();
            assert_eq!(
                err.kind(),
                crate::ErrorKind::InvalidArgument,
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bad_run_urls_are_invalid_arguments() {
        for bad in [
            "",
            "not a url",
            "ftp://h/count/0f8fad5b-d9cb-469f-a165-70867728950e",
            "http://h/",
            "http://h/count",
            "http://h/count/not-an-id",
            "http://h/-x/0f8fad5b-d9cb-469f-a165-70867728950e",
        ] {
            let err = Run::from_url(bad).unwrap_err();
            assert_eq!(
                err.kind(),
                crate::ErrorKind::InvalidArgument,
                "{bad}: {err}"
            );
        }
    }
}
