//! `include/longrun.h` is generated from `src/lib.rs` by cbindgen and committed, so C and Go
//! users read it without a build. This test regenerates it and fails when the committed file
//! differs (after rewriting it): run `cargo test -p longrun-c --test header` and commit.

use std::path::Path;

#[test]
fn the_committed_header_matches_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let path = dir.join("include/longrun.h");
    let committed = std::fs::read(&path).unwrap_or_default();
    if committed != generated {
        std::fs::write(&path, &generated).expect("write include/longrun.h");
        panic!(
            "bindings/c/include/longrun.h was out of date with src/lib.rs; it has been \
             regenerated: review and commit it"
        );
    }
}
