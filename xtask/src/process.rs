//! Running child processes: uniform step messages, PATH lookup and environment hygiene.
//!
//! `cargo xtask` runs under `cargo run`, which (with rustup's proxy) leaves variables in the
//! environment that pin any child cargo to the outer toolchain and package. Children that must use
//! another toolchain (`nightly` for the eBPF crate) start from [`clear_parent_cargo_env`].

use std::{
    env,
    ffi::OsStr,
    fmt::Display,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
};

use anyhow::{bail, Context, Result};

/// Prints one progress line, `[area] message`.
pub fn step(area: &str, message: impl Display) {
    println!("[{area}] {message}");
}

/// True when we run as root (effective uid 0): installing packages and loading eBPF need it.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Finds an executable named `name` in `PATH`, as a shell would.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

/// True if `path` is a regular file with an execute bit set.
pub fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Sets `cmd`'s PATH to ours with `dir` first (moved there if it was already present).
pub fn prepend_path(cmd: &mut Command, dir: &Path) {
    // The command's own PATH when an earlier call set it, else ours.
    let set = cmd.get_envs().find(|(key, _)| *key == "PATH").and_then(|(_, value)| value.map(|v| v.to_os_string()));
    let path = set.or_else(|| env::var_os("PATH")).unwrap_or_default();
    let dirs = std::iter::once(dir.to_path_buf()).chain(env::split_paths(&path).filter(|d| d != dir));
    if let Ok(joined) = env::join_paths(dirs) {
        cmd.env("PATH", joined);
    }
}

/// `$CARGO_HOME`, or `~/.cargo` when it is not set.
pub fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

/// Variables that select a toolchain or compiler. Inherited from `cargo run`, they would make a
/// `cargo +nightly` child build with the outer (stable) rustc.
const TOOLCHAIN_VARS: &[&str] =
    &["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTDOC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS", "RUSTDOCFLAGS"];

/// `CARGO_*` variables that are user configuration rather than outer-build state; children keep them.
const KEPT_CARGO_VARS: &[&str] = &[
    "CARGO_HOME",
    "CARGO_TARGET_DIR",
    "CARGO_NET_",
    "CARGO_HTTP_",
    "CARGO_REGISTRY_",
    "CARGO_REGISTRIES_",
    "CARGO_TERM_",
];

/// Removes the outer cargo's toolchain selection and build state from `cmd`'s environment, so the
/// child picks its own toolchain and its own flags.
pub fn clear_parent_cargo_env(cmd: &mut Command) -> &mut Command {
    for name in TOOLCHAIN_VARS {
        cmd.env_remove(name);
    }
    for (name, _) in env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let is_cargo_var = name == "CARGO" || name.starts_with("CARGO_");
        let kept = KEPT_CARGO_VARS.iter().any(|kept| name.starts_with(kept));
        if is_cargo_var && !kept {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// A command for the cargo that runs this xtask (same toolchain), without the per-package
/// variables `cargo run` sets for the xtask itself.
pub fn host_cargo() -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    for (name, _) in env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let per_package = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || name == "CARGO_PRIMARY_PACKAGE";
        if per_package {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// The command line as a user could retype it, with the variables it sets explicitly.
pub fn describe(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (name, value) in cmd.get_envs() {
        // PATH additions are noise here; removed variables are not worth listing either.
        if name == "PATH" {
            continue;
        }
        if let Some(value) = value {
            // CARGO_ENCODED_RUSTFLAGS separates flags with 0x1f; show them as a shell would.
            let value = value.to_string_lossy().replace('\x1f', " ");
            words.push(format!("{}={}", name.to_string_lossy(), quote(OsStr::new(&value))));
        }
    }
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=+:@,".contains(c)) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status().with_context(|| format!("could not start `{}`", describe(cmd)))
}

/// Runs `cmd` with inherited stdio; fails unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` capturing its output; fails, quoting stderr, unless it exits successfully.
pub fn output(cmd: &mut Command) -> Result<String> {
    let Output { status, stdout, stderr } =
        cmd.output().with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status}): {}", describe(cmd), String::from_utf8_lossy(&stderr).trim());
    }
    String::from_utf8(stdout).with_context(|| format!("`{}` printed non-UTF-8 output", describe(cmd)))
}
