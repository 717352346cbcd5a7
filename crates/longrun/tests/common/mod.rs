//! What the client's test suites share: the reference server with its demo objects and default
//! settings, in-process on an ephemeral loopback port.
#![allow(dead_code)] // each test binary uses its own part of this module

/// Start the demo server on the current tokio runtime and return its base URL
/// (`http://127.0.0.1:PORT`). It serves until the runtime shuts down, i.e. until the test ends.
pub async fn demo_server() -> String {
    let server = longrun_server::Server::builder()
        .demo()
        .build()
        .expect("the demo objects have unique names");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port for the test server");
    let addr = listener.local_addr().expect("the test server's address");
    tokio::spawn(longrun_server::serve(
        listener,
        server,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

/// The demo server on a unix socket in a fresh directory (removed when the guard drops); its
/// base URL, `unix:///…/longrun.sock`.
pub async fn unix_demo_server() -> (String, tempfile::TempDir) {
    let server = longrun_server::Server::builder()
        .demo()
        .build()
        .expect("the demo objects have unique names");
    let dir = tempfile::tempdir().expect("a directory for the socket");
    let path = dir.path().join("longrun.sock");
    let listener = longrun_server::bind_unix(&path, 0o600).expect("a unix socket");
    tokio::spawn(longrun_server::serve(
        listener,
        server,
        std::future::pending(),
    ));
    (format!("unix://{}", path.display()), dir)
}
