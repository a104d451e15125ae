//! `cargo xtask test`: the one command that builds everything and runs the end-to-end tests.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::Result;
use clap::Args;

use crate::{
    bootstrap::{self, BootstrapArgs},
    build_ebpf,
    process::{self, find_in_path, is_root, step},
    system_packages, workspace,
};

/// `cargo xtask test` options.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Passed to `cargo test` as is, e.g. `-- -p ddtrace-tests -- --nocapture`.
    #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
    pub cargo_test_args: Vec<String>,
}

/// The Python package providing `ddapm-test-agent`, the trace intake the tests assert against.
const TEST_AGENT_PACKAGE: &str = "ddapm-test-agent";

pub fn run(args: &TestArgs) -> Result<ExitCode> {
    // First: the builds need gcc, and a fresh machine has neither Go nor nginx for the tests.
    system_packages::ensure()?;
    let toolchain = bootstrap::ensure(&BootstrapArgs { bpf_linker_root: None })?;
    build_ebpf::build(&toolchain, true)?;
    workspace::build_agent()?;
    let extra_path = ensure_test_agent()?;
    // The deployment test checks the Kubernetes manifests against the Kubernetes schemas.
    let validator_path = ensure_python_tool("deploy", "kubernetes-validate", "kubernetes-validate")?;
    ensure_target_app_modules()?;
    ensure_node_modules()?;

    if !is_root() {
        step(
            "test",
            "warning: not running as root; the tests load eBPF programs and need CAP_BPF, \
             CAP_PERFMON and CAP_SYS_ADMIN",
        );
    }

    // Default members: everything but the eBPF crate, which only builds for the BPF target.
    let mut cmd = process::host_cargo();
    cmd.current_dir(workspace::root()).args(["test", "--release"]).args(&args.cargo_test_args);
    for dir in [extra_path, validator_path].into_iter().flatten() {
        process::prepend_path(&mut cmd, &dir);
    }
    step("test", format!("running: {}", process::describe(&cmd)));
    let status = process::status(&mut cmd)?;
    if status.success() {
        step("test", "all tests passed");
        return Ok(ExitCode::SUCCESS);
    }
    step("test", format!("cargo test failed ({status})"));
    let code = status.code().and_then(|c| u8::try_from(c).ok()).filter(|&c| c != 0);
    Ok(ExitCode::from(code.unwrap_or(1)))
}

/// Python modules the end-to-end tests' target applications import, and the PyPI package that
/// brings each.
const TARGET_APP_MODULES: &[(&str, &str)] = &[
    ("gunicorn", "gunicorn"),
    ("flask", "flask"),
    ("django", "django"),
    ("fastapi", "fastapi"),
    ("uvicorn", "uvicorn"),
    ("requests", "requests"),
    ("redis", "redis"),
    // psycopg2's wheel bundles its own libpq and libssl; psycopg (3) uses the system's libpq.
    ("psycopg2", "psycopg2-binary"),
    ("psycopg", "psycopg"),
    ("pymysql", "PyMySQL"),
];

/// Installs the target applications' Python modules that `python3` cannot import yet.
fn ensure_target_app_modules() -> Result<()> {
    for (module, package) in TARGET_APP_MODULES {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if present {
            step("test-apps", format!("python module {module}: already installed"));
            continue;
        }
        step("test-apps", format!("python module {module}: missing, installing {package} with pip"));
        process::run(&mut pip_install(package)).map_err(|error| {
            error.context(format!("installing the Python package {package} for the test apps failed"))
        })?;
    }
    Ok(())
}

/// The Node.js clients' manifest, and where `npm` installs them (the tests set `NODE_PATH`).
const NODE_APPS_MANIFEST: &str = "tests/apps/node/package.json";

/// Installs the Node.js test apps' modules (`tests/apps/node/package.json`) into
/// `target/node-apps` when they are missing or the manifest changed.
fn ensure_node_modules() -> Result<()> {
    let manifest = std::fs::read(workspace::root().join(NODE_APPS_MANIFEST))?;
    let directory = workspace::target_dir().join("node-apps");
    let installed_manifest = directory.join("package.json");
    let complete = directory.join("node_modules/.package-lock.json").exists();
    if complete && std::fs::read(&installed_manifest).ok().as_deref() == Some(manifest.as_slice()) {
        step("test-apps", "node modules: already installed");
        return Ok(());
    }
    system_packages::ensure_npm()?;
    std::fs::create_dir_all(&directory)?;
    std::fs::write(&installed_manifest, &manifest)?;
    let mut install = Command::new("npm");
    install.args(["install", "--no-audit", "--no-fund", "--prefix"]).arg(&directory);
    step("test-apps", format!("node modules: installing: {}", process::describe(&install)));
    process::run(&mut install).map_err(|error| error.context("installing the Node.js test apps' modules failed"))
}

/// Installs the test agent if `ddapm-test-agent` is not on PATH. Returns a directory to add to
/// the tests' PATH when pip put the script somewhere PATH does not reach (e.g. before a
/// `pyenv rehash`, or in the user scheme).
fn ensure_test_agent() -> Result<Option<PathBuf>> {
    ensure_python_tool("test-agent", TEST_AGENT_PACKAGE, "ddapm-test-agent")
}

/// Installs the PyPI `package` with `python3 -m pip` if its `script` is not on PATH. Returns the
/// directory holding the script when PATH does not reach it (e.g. before a `pyenv rehash`, or in
/// the user scheme), `None` when it is on PATH.
pub(crate) fn ensure_python_tool(area: &str, package: &str, script: &str) -> Result<Option<PathBuf>> {
    if let Some(path) = find_in_path(script) {
        step(area, format!("{script}: already installed at {}", path.display()));
        return Ok(None);
    }
    let mut install = pip_install(package);
    step(area, format!("{script}: missing, installing: {}", process::describe(&install)));
    process::run(&mut install).map_err(|error| {
        error.context(format!(
            "installing {package} failed; on a system Python that refuses pip (PEP 668) use a \
             virtualenv or `python3 -m pip install --break-system-packages {package}`"
        ))
    })?;
    if let Some(path) = find_in_path(script) {
        step(area, format!("{script}: installed at {}", path.display()));
        return Ok(None);
    }
    let dirs = python_script_dirs()?;
    let dir = dirs.iter().find(|dir| process::is_executable(&dir.join(script))).cloned();
    match dir {
        Some(dir) => {
            step(area, format!("{script}: installed in {}, not on PATH", dir.display()));
            Ok(Some(dir))
        }
        None => anyhow::bail!(
            "pip installed {package} but no `{script}` script is on PATH or in python3's script \
             directories ({}); add its location to PATH",
            dirs.iter().map(|dir| dir.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `python3 -m pip install PACKAGE`. Debian's own python3 refuses pip installs (PEP 668); as root,
/// like the Debian packages in `system_packages`, we install into it anyway
/// (`--break-system-packages`): that is what a fresh machine running `cargo xtask test` needs.
fn pip_install(package: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "pip", "install"]);
    if is_root() && python_is_externally_managed() {
        cmd.arg("--break-system-packages");
    }
    cmd.arg(package);
    cmd
}

/// True when `python3`'s standard library carries PEP 668's `EXTERNALLY-MANAGED` marker, i.e. its
/// distribution manages it and pip refuses to install into it without an override.
fn python_is_externally_managed() -> bool {
    let stdlib =
        process::output(Command::new("python3").args(["-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"]));
    stdlib.is_ok_and(|stdlib| Path::new(stdlib.trim()).join("EXTERNALLY-MANAGED").exists())
}

/// Where `python3`'s pip puts scripts: the interpreter's own scheme, then the user scheme.
pub(crate) fn python_script_dirs() -> Result<Vec<PathBuf>> {
    let scripts = process::output(Command::new("python3").args([
        "-c",
        "import os, sysconfig\n\
         print(sysconfig.get_path('scripts'))\n\
         print(sysconfig.get_path('scripts', os.name + '_user'))",
    ]))?;
    Ok(scripts.lines().map(PathBuf::from).collect())
}
