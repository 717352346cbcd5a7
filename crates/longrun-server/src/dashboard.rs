//! `GET /_dashboard` (spec §13.7): a live page for operators. Its three files are compiled
//! into the binary, so nothing is fetched from anywhere at runtime; the page talks to the
//! server over one WebSocket (§28), so every table it shows is the API's own answer.
//!
//! The page itself is public, like `/_openapi.json`: it holds no data. What it shows needs
//! the same token as the API, which the page asks for and sends in an `AUTH` packet.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::Server;

const INDEX: &str = include_str!("dashboard/index.html");
const APP: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// The page's own origin and nothing else: its script, its style, its socket.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

pub(crate) fn routes(router: Router<Server>) -> Router<Server> {
    router
        .route(
            "/_dashboard",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/_dashboard/",
            get(|| async { Redirect::permanent("/_dashboard") }),
        )
        .route(
            "/_dashboard/app.js",
            get(|| async { asset(APP, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/_dashboard/style.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // The files change with the binary; revalidating is cheap and never stale.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
        ],
        body,
    )
        .into_response()
}
