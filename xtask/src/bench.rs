//! `cargo xtask bench [server|client|workers|streams|ws|hooks|js|python|go]`: builds the benchmarks in release mode and runs them.
//! Each starts what it compares as child processes and drives them from the same run, so every
//! figure has its peer beside it. Later issues add the language SDKs' benchmarks here.

use crate::cargo;

const SUITES: [(&str, &str, &str); 6] = [
    ("server", "longrun-server", "server"),
    ("client", "longrun", "client"),
    // A worker node's service through the server against the worker called directly, and
    // against a bare proxy making the same call (the ceiling of any server with two hops);
    // the bench builds the Go example worker itself (SKIP without `go`).
    ("workers", "longrun-server", "workers"),
    // Byte streams (spec §27) against a plain route serving the same bytes.
    ("streams", "longrun-server", "streams"),
    // The WebSocket (spec §28) against SSE, and pubsub fan-out.
    ("ws", "longrun-server", "ws"),
    // Response hooks (spec §26) to a local receiver, beside plain POSTs to it.
    ("hooks", "longrun-server", "hooks"),
];

pub fn run(args: &[String]) -> Result<(), String> {
    for (name, package, bench) in SUITES {
        if !args.is_empty() && !args.iter().any(|a| a == name) {
            continue;
        }
        let mut cmd = cargo();
        cmd.args(["bench", "-p", package, "--bench", bench]);
        // Held until the benchmark is done: the Postgres store is measured on a throwaway
        // cluster beside memory and SQLite.
        let mut cluster = None;
        if name == "server" {
            // The seed's own Go server, measured beside ours in the same run.
            if let Some(seed) = crate::go::seed_server()? {
                cmd.env("LONGRUN_SEED_SERVER", seed);
            }
            cluster = crate::pg::start()?;
            if let Some(pg) = &cluster {
                cmd.env(crate::pg::ENV, pg.url());
            }
        }
        crate::step(&format!("{name} benchmark"), &mut cmd)?;
        drop(cluster);
    }
    if args.is_empty() || args.iter().any(|a| a == "js") {
        crate::js::bench()?;
    }
    if args.is_empty() || args.iter().any(|a| a == "python") {
        crate::python::bench()?;
    }
    if args.is_empty() || args.iter().any(|a| a == "go") {
        crate::go::bench()?;
    }
    Ok(())
}
