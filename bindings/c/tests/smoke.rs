//! Compile `tests/smoke.c` against the static library with the system C compiler and run it
//! against the demo server: the C API used from C, as its users will.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The static library this test run built (`cargo test` builds every crate type of the
/// library into the directory of the test binaries).
fn staticlib() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the deps directory");
    for dir in [deps, deps.parent().unwrap_or(deps)] {
        let lib = dir.join("liblongrun_c.a");
        if lib.exists() {
            return lib;
        }
    }
    panic!("liblongrun_c.a not found next to {}", exe.display());
}

#[test]
fn the_c_smoke_program_passes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = longrun_server::Server::builder()
            .demo()
            .build()
            .expect("the demo objects have unique names");
        tokio::spawn(longrun_server::serve(
            listener,
            server,
            std::future::pending(),
        ));
        format!("http://{addr}")
    });

    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("longrun-c-smoke");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-Wall",
            "-Wextra",
            "-Werror",
        ])
        .arg("-I")
        .arg(dir.join("include"))
        .arg(dir.join("tests/smoke.c"))
        .arg(staticlib())
        // What the Rust standard library needs (`cargo rustc -- --print native-static-libs`).
        .args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ])
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
    assert!(
        status.success(),
        "compiling tests/smoke.c failed ({status})"
    );

    let out = Command::new(&exe)
        .arg(&url)
        .output()
        .expect("run the smoke program");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("smoke: ok"),
        "the C smoke program failed ({}):\n{stdout}{stderr}",
        out.status
    );
    drop(rt);
}
