package longrun

// Version is the version of this module, the same as every longrun package's (the Rust
// workspace's; `cargo xtask dist` refuses to build when they differ).
const Version = "0.1.0"
