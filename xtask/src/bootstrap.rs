//! Idempotent setup of what the kernel-side build needs: the nightly toolchain with `rust-src`
//! (for `-Z build-std=core`) and `bpf-linker`.
//!
//! No prebuilt bpf-linker can be downloaded here, so it is built from crates.io and linked against
//! the nightly toolchain's own `libLLVM` shared library. That guarantees the linker reads the
//! bitcode rustc emits (same LLVM), and needs no system LLVM packages.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::process::{self, cargo_home, find_in_path, is_executable, step};

/// The toolchain that builds the eBPF crate.
pub const NIGHTLY: &str = "nightly";

/// The bpf-linker release we build: proven here with stable 1.95 and the nightly's LLVM 22 (its
/// `llvm-21`..`llvm-23` features select the LLVM it binds to).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// `cargo xtask bootstrap` options.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Look for and install bpf-linker (and the LLVM prefix it links to) under this directory
    /// instead of PATH and `$CARGO_HOME`, e.g. to test the bootstrap without touching `~/.cargo`.
    #[arg(long, value_name = "DIR")]
    pub bpf_linker_root: Option<PathBuf>,
}

/// What the eBPF build uses once the bootstrap is done.
#[derive(Debug)]
pub struct EbpfToolchain {
    /// The rustup binary, used to run the nightly cargo/rustc.
    pub rustup: PathBuf,
    /// The bpf-linker that rustc will invoke for `bpfel-unknown-none`.
    pub bpf_linker: PathBuf,
}

impl EbpfToolchain {
    /// A command running `program` (cargo, rustc) from the nightly toolchain, with the outer
    /// cargo's toolchain selection removed and bpf-linker reachable through PATH.
    pub fn nightly(&self, program: &str) -> Command {
        let mut cmd = Command::new(&self.rustup);
        process::clear_parent_cargo_env(&mut cmd);
        cmd.args(["run", NIGHTLY, program]);
        // rustc runs the first `bpf-linker` on PATH: make it the one the bootstrap checked.
        if let Some(dir) = self.bpf_linker.parent() {
            process::prepend_path(&mut cmd, dir);
        }
        cmd
    }
}

/// Makes sure nightly, its `rust-src` and bpf-linker are installed; installs what is missing.
pub fn ensure(args: &BootstrapArgs) -> Result<EbpfToolchain> {
    let rustup = find_rustup()?;
    let nightly = NightlyInfo::query(&rustup)?;
    step(
        "bootstrap",
        format!("nightly toolchain: already installed ({}, LLVM {})", nightly.rustc_version, nightly.llvm_version),
    );
    ensure_rust_src(&rustup)?;
    let bpf_linker = ensure_bpf_linker(&rustup, &nightly, args.bpf_linker_root.as_deref())?;
    Ok(EbpfToolchain { rustup, bpf_linker })
}

fn find_rustup() -> Result<PathBuf> {
    if let Some(rustup) = find_in_path("rustup") {
        return Ok(rustup);
    }
    let in_cargo_home = cargo_home()?.join("bin").join("rustup");
    if is_executable(&in_cargo_home) {
        return Ok(in_cargo_home);
    }
    bail!(
        "rustup is not on PATH nor at {}; the eBPF build needs rustup to manage the nightly \
         toolchain (see https://rustup.rs)",
        in_cargo_home.display()
    )
}

/// What `rustc +nightly -vV` says about itself.
#[derive(Debug)]
struct NightlyInfo {
    /// e.g. `rustc 1.97.0-nightly (e50aa6fba 2026-05-19)`.
    rustc_version: String,
    /// e.g. `22.1.4`.
    llvm_version: String,
    /// e.g. 22: selects bpf-linker's `llvm-22` feature.
    llvm_major: u32,
}

impl NightlyInfo {
    fn query(rustup: &Path) -> Result<Self> {
        let toolchains = process::output(Command::new(rustup).args(["toolchain", "list"]))?;
        // `nightly-<host>` exactly: a dated `nightly-2026-...` is another toolchain. Checked before
        // `rustup run`, which could otherwise auto-install whatever nightly is current.
        let installed = toolchains.lines().any(|line| {
            let name = line.split_whitespace().next().unwrap_or_default();
            name.strip_prefix(&format!("{NIGHTLY}-"))
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        });
        if !installed {
            bail!(
                "the {NIGHTLY} toolchain is not installed; the eBPF crate needs it for \
                 `-Z build-std`. Install it with `rustup toolchain install {NIGHTLY} \
                 --profile minimal --component rust-src` (this project is tested with \
                 nightly-2026-05-19, LLVM 22)"
            );
        }
        let verbose = process::output(
            process::clear_parent_cargo_env(&mut Command::new(rustup)).args(["run", NIGHTLY, "rustc", "-vV"]),
        )?;
        let rustc_version = verbose.lines().next().unwrap_or_default().trim().to_owned();
        let llvm_version = verbose
            .lines()
            .find_map(|line| line.strip_prefix("LLVM version:"))
            .map(|version| version.trim().to_owned())
            .with_context(|| format!("`rustc +{NIGHTLY} -vV` printed no `LLVM version:` line:\n{verbose}"))?;
        let llvm_major = llvm_version
            .split('.')
            .next()
            .and_then(|major| major.parse().ok())
            .with_context(|| format!("cannot read the LLVM major version from `{llvm_version}`"))?;
        Ok(Self { rustc_version, llvm_version, llvm_major })
    }
}

fn ensure_rust_src(rustup: &Path) -> Result<()> {
    let installed =
        process::output(Command::new(rustup).args(["component", "list", "--toolchain", NIGHTLY, "--installed"]))?;
    if installed.lines().any(|line| line.trim() == "rust-src") {
        step("bootstrap", format!("rust-src for {NIGHTLY}: already installed"));
        return Ok(());
    }
    let mut add = Command::new(rustup);
    add.args(["component", "add", "rust-src", "--toolchain", NIGHTLY]);
    step("bootstrap", format!("rust-src for {NIGHTLY}: missing, installing: {}", process::describe(&add)));
    process::run(&mut add)
}

fn ensure_bpf_linker(rustup: &Path, nightly: &NightlyInfo, root: Option<&Path>) -> Result<PathBuf> {
    let install_root = match root {
        Some(root) => root.to_path_buf(),
        None => cargo_home()?,
    };
    let installed = install_root.join("bin").join("bpf-linker");
    let installed_if_present = Some(installed.clone()).filter(|path| is_executable(path));
    let existing = match root {
        Some(_) => installed_if_present,
        None => find_in_path("bpf-linker").or(installed_if_present),
    };
    let existing_is_ours = existing.as_ref() == Some(&installed);
    match existing {
        Some(path) => match process::output(Command::new(&path).arg("--version")) {
            Ok(version) => {
                step("bootstrap", format!("bpf-linker: already installed at {} ({})", path.display(), version.trim()));
                warn_if_other_llvm(&path, nightly.llvm_major);
                return Ok(path);
            }
            // Typically its libLLVM vanished: a toolchain update, or a prefix under /tmp.
            Err(error) => step(
                "bootstrap",
                if existing_is_ours {
                    format!(
                        "bpf-linker: {} does not run ({error:#}); restoring its LLVM prefix, \
                         rebuilding it if that is not enough",
                        path.display()
                    )
                } else {
                    format!(
                        "bpf-linker: {} does not run ({error:#}); building a new one at {}",
                        path.display(),
                        installed.display()
                    )
                },
            ),
        },
        None => step(
            "bootstrap",
            format!(
                "bpf-linker: not on PATH nor at {}; building it from crates.io against the \
                 {NIGHTLY} toolchain's libLLVM",
                installed.display()
            ),
        ),
    }

    let llvm_lib = nightly_libllvm(rustup)?;
    let prefix = llvm_prefix(&install_root, &llvm_lib)?;
    // A linker we built only needs its LLVM prefix back (e.g. after a cleanup): no rebuild.
    if existing_is_ours {
        if let Ok(version) = process::output(Command::new(&installed).arg("--version")) {
            step("bootstrap", format!("bpf-linker: runs again with its LLVM prefix restored ({})", version.trim()));
            return Ok(installed);
        }
    }

    let custom_root = root.map(|_| install_root.as_path());
    cargo_install_bpf_linker(nightly.llvm_major, &prefix, custom_root, &installed)?;
    Ok(installed)
}

/// `LLVM_PREFIX=<prefix> cargo install bpf-linker ... [--root <root>]`, then checks that
/// `installed` (where that puts the binary) runs.
fn cargo_install_bpf_linker(llvm_major: u32, prefix: &Path, root: Option<&Path>, installed: &Path) -> Result<()> {
    let mut install = process::host_cargo();
    install.env("LLVM_PREFIX", prefix).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        &format!("llvm-{llvm_major}"),
    ]);
    if let Some(root) = root {
        install.arg("--root").arg(root);
    }
    // cargo skips a crate it has already installed at this version, even when it no longer runs.
    if installed.exists() {
        install.arg("--force");
    }
    step("bootstrap", format!("bpf-linker: building (a few minutes): {}", process::describe(&install)));
    process::run(&mut install)?;

    let version = process::output(Command::new(installed).arg("--version"))
        .with_context(|| format!("bpf-linker was installed at {} but does not run", installed.display()))?;
    step("bootstrap", format!("bpf-linker: installed at {} ({})", installed.display(), version.trim()));
    Ok(())
}

/// Warns when `bpf_linker` is dynamically linked to an LLVM whose major differs from rustc's: it
/// may then fail to read the bitcode rustc emits. Best effort (needs `ldd`); silent otherwise.
fn warn_if_other_llvm(bpf_linker: &Path, llvm_major: u32) {
    let Ok(libraries) = process::output(Command::new("ldd").arg(bpf_linker)) else {
        return;
    };
    let Some(line) = libraries.lines().find(|line| line.contains("libLLVM")) else {
        return; // statically linked LLVM: nothing to compare cheaply
    };
    let after = &line[line.find("libLLVM").unwrap_or(0) + "libLLVM".len()..];
    let digits: String = after.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
    if digits.parse::<u32>().is_ok_and(|major| major != llvm_major) {
        step(
            "bootstrap",
            format!(
                "warning: {} links {} but {NIGHTLY} rustc uses LLVM {llvm_major}; if linking \
                 fails, remove it and rerun to build a matching one",
                bpf_linker.display(),
                line.trim()
            ),
        );
    }
}

/// The nightly toolchain's `libLLVM.so.<version>` (its soname), in `<sysroot>/lib`.
fn nightly_libllvm(rustup: &Path) -> Result<PathBuf> {
    let sysroot = process::output(
        process::clear_parent_cargo_env(&mut Command::new(rustup))
            .args(["run", NIGHTLY, "rustc", "--print", "sysroot"]),
    )?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let mut candidates: Vec<PathBuf> = fs::read_dir(&lib_dir)
        .with_context(|| format!("cannot list {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with("libLLVM.so."))
        })
        .collect();
    candidates.sort();
    match candidates.as_slice() {
        [lib] => Ok(lib.clone()),
        [] => bail!(
            "the {NIGHTLY} toolchain has no libLLVM.so.* in {}; bpf-linker must link the \
             toolchain's shared LLVM. Reinstall the toolchain (`rustup toolchain install {NIGHTLY} \
             --force`)",
            lib_dir.display()
        ),
        [first, ..] => {
            step("bootstrap", format!("several libLLVM.so.* in {}; using {}", lib_dir.display(), first.display()));
            Ok(first.clone())
        }
    }
}

/// Makes `<root>/llvm-prefix/<libLLVM file name>/lib` with two symlinks to `llvm_lib`:
/// `libLLVM.so` (what the linker looks for) and the library's own name (its soname, what the
/// installed bpf-linker loads through its rpath). Returns the prefix (the parent of `lib`).
///
/// It lives next to the installed binary, not under `target/`, because the binary's rpath points
/// into it: `cargo clean` must not break the linker. One prefix per LLVM build, so a toolchain
/// update does not pull the library from under an older bpf-linker.
fn llvm_prefix(root: &Path, llvm_lib: &Path) -> Result<PathBuf> {
    let lib_name = llvm_lib.file_name().context("libLLVM path has no file name")?;
    let prefix = root.join("llvm-prefix").join(lib_name);
    let lib_dir = prefix.join("lib");
    fs::create_dir_all(&lib_dir).with_context(|| format!("cannot create {}", lib_dir.display()))?;
    let mut created = Vec::new();
    for link_name in [Path::new("libLLVM.so"), Path::new(lib_name)] {
        let link = lib_dir.join(link_name);
        match fs::read_link(&link) {
            Ok(target) if target == llvm_lib => continue,
            Ok(_) => fs::remove_file(&link)
                .with_context(|| format!("cannot replace the stale symlink {}", link.display()))?,
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("{} exists and is not a symlink; remove it", link.display()))
            }
        }
        symlink(llvm_lib, &link).with_context(|| format!("cannot create {}", link.display()))?;
        created.push(link_name.display().to_string());
    }
    let what =
        if created.is_empty() { "already there".to_owned() } else { format!("created {}", created.join(" and ")) };
    step("bootstrap", format!("LLVM prefix {} -> {}: {what}", lib_dir.display(), llvm_lib.display()));
    Ok(prefix)
}
