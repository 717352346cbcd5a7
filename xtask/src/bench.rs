//! `cargo xtask bench`: builds the benchmark in release mode and runs it. The benchmark
//! itself (crates/longrun-server/benches/server.rs) starts the servers it compares as child
//! processes and drives them from the same run, so every figure has its peer beside it.

use crate::cargo;

pub fn run(args: &[String]) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "longrun-server", "--bench", "server", "--"]);
    cmd.args(args);
    crate::step("server benchmark", &mut cmd)
}
