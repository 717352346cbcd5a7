//! CORS on the wire: a preflight and an actual request from an allowed origin get the headers
//! a browser needs; other origins, and servers without `cors_origins`, get none.

mod common;

use common::{TestServer, request};
use longrun_server::{Config, Server};

const ORIGIN: &str = "http://localhost:5173";

async fn cors_server() -> TestServer {
    let config = Config {
        cors_origins: vec![ORIGIN.into()],
        ..Config::default()
    };
    TestServer::start(Server::builder().config(config).demo()).await
}

fn list(value: Option<&str>) -> Vec<String> {
    let mut items: Vec<String> = value
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    items.sort();
    items
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered() {
    let t = cors_server().await;
    let res = t
        .raw(&request(
            "OPTIONS",
            "/count",
            &[
                ("Origin", ORIGIN),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "content-type,authorization,last-event-id,idempotency-key,prefer,longrun-deadline,longrun-hook,longrun-hook-events,range",
                ),
            ],
            "",
        ))
        .await;
    assert!(res.status == 200 || res.status == 204, "{res:?}");
    assert_eq!(res.header("access-control-allow-origin"), Some(ORIGIN));
    let methods = list(res.header("access-control-allow-methods"));
    for m in ["delete", "get", "head", "post"] {
        assert!(methods.contains(&m.to_owned()), "{methods:?}");
    }
    let headers = list(res.header("access-control-allow-headers"));
    for h in [
        "authorization",
        "content-type",
        "idempotency-key",
        "last-event-id",
        "prefer",
        "longrun-deadline",
        "longrun-hook",
        "longrun-hook-events",
        "range",
    ] {
        assert!(headers.contains(&h.to_owned()), "{headers:?}");
    }
}

#[tokio::test]
async fn an_actual_request_exposes_location_and_longrun_headers() {
    let t = cors_server().await;
    let res = t
        .raw(&request(
            "POST",
            "/echo",
            &[("Origin", ORIGIN), ("Content-Type", "application/json")],
            "{}",
        ))
        .await;
    assert_eq!(res.status, 201);
    assert_eq!(res.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(
        list(res.header("access-control-expose-headers")),
        [
            "content-range",
            "idempotent-replayed",
            "location",
            "longrun-last-event-id",
            "longrun-state",
            "longrun-stream-length",
            "longrun-stream-url",
            "preference-applied",
            "www-authenticate"
        ]
    );
    // Errors carry the headers too, so a page can read the problem.
    let res = t
        .raw(&request(
            "HEAD",
            &format!("{}x", res.header("location").unwrap()),
            &[("Origin", ORIGIN)],
            "",
        ))
        .await;
    assert_eq!(res.header("access-control-allow-origin"), Some(ORIGIN));
}

#[tokio::test]
async fn other_origins_and_servers_without_cors_get_no_cors_headers() {
    let t = cors_server().await;
    let res = t
        .raw(&request(
            "POST",
            "/echo",
            &[("Origin", "http://evil.example")],
            "",
        ))
        .await;
    assert_eq!(res.status, 201);
    assert_eq!(res.header("access-control-allow-origin"), None);

    let plain = TestServer::demo().await;
    let res = plain
        .raw(&request("POST", "/echo", &[("Origin", ORIGIN)], ""))
        .await;
    assert_eq!(res.status, 201);
    assert_eq!(res.header("access-control-allow-origin"), None);
}
