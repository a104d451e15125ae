//! For the Go readers' tests: a program built by the machine's Go the way the end-to-end tests
//! build theirs (`tests/src/native_app.rs`): static, offline, with the shared build cache under
//! `target/` so the standard library is compiled once.

use std::{path::Path, process::Command};

/// Builds `package` (a file or a folder, run from `dir`) into `target/<name>`, `-s -w` when
/// `stripped`, and returns the binary's bytes.
pub fn build(dir: &Path, package: &Path, name: &str, stripped: bool) -> Vec<u8> {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let output = target.join(name);
    let mut command = Command::new("go");
    command.arg("build");
    if stripped {
        command.arg("-ldflags=-s -w");
    }
    let status = command
        .arg("-o")
        .arg(&output)
        .arg(package)
        .current_dir(dir)
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-buildvcs=false")
        .env("GOPROXY", "off")
        .env("GO111MODULE", "on")
        .env("GOCACHE", target.join("go-cache"))
        .env("GOPATH", target.join("go-path"))
        .status()
        .unwrap_or_else(|e| panic!("`go` cannot run (`cargo xtask test` installs golang-go): {e}"));
    assert!(status.success(), "go build {}", package.display());
    std::fs::read(output).unwrap()
}
