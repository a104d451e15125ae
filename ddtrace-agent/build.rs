//! Embeds the kernel-side object built by `cargo xtask build-ebpf`.
use std::{env, path::PathBuf};

fn main() {
    let workspace = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let object = workspace.join("target/bpfel-unknown-none/release/ddtrace-ebpf");
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rerun-if-env-changed=DDTRACE_EBPF_OBJECT");
    let object = env::var_os("DDTRACE_EBPF_OBJECT").map(PathBuf::from).unwrap_or(object);
    if !object.exists() {
        panic!(
            "\n\nThe eBPF object {} is missing.\nBuild it first with:  cargo xtask build-ebpf\n\n",
            object.display()
        );
    }
    println!("cargo:rustc-env=DDTRACE_EBPF_OBJECT={}", object.canonicalize().unwrap().display());
}
