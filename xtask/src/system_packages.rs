//! The Debian packages the end-to-end tests need, installed with apt when missing.
//!
//! `cargo xtask test` must work on a fresh Debian 12 machine on its own, so the list lives here
//! rather than in a CI script. Checking it is one `dpkg-query` call; apt runs only when something
//! is missing, so a machine that already has everything pays nothing.

use std::{
    collections::HashSet,
    fs,
    io::{self, ErrorKind},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::process::{self, find_in_path, is_root, step};

/// The packages the tests need, each with why.
const PACKAGES: &[&str] = &[
    // Link host binaries, build C in build scripts (ring), and the profiler tests' C programs.
    "gcc",
    "libc6-dev",
    // Debian's /usr/bin/python3.11 carries USDT notes the tests can probe.
    "python3",
    // pip for the test agent and the target apps' modules when python3 is Debian's.
    "python3-pip",
    "python3-venv",
    // The SQLite integration's target library, and the demo.
    "sqlite3",
    "libsqlite3-0",
    // crates.io and PyPI over HTTPS; curl is also a test client (HTTP, TLS).
    "curl",
    "ca-certificates",
    // The TLS tests make their own certificates (libssl3 itself comes with curl).
    "openssl",
    // The Go HTTP tests build a static net/http server and client (no cgo, no libc): Go makes its
    // own raw system calls, which only the socket tracepoints can see.
    "golang-go",
    // A real event-driven server (master and workers) the HTTP tests trace. They run their own
    // instances on free ports, so the system one the package may start is stopped
    // (`stop_system_nginx`).
    "nginx",
    // setcap: the least-privilege test gives the agent file capabilities, as the image does.
    "libcap2-bin",
    // The database protocol tests run their own servers on free loopback ports.
    "redis-server",
    "postgresql",
    "mariadb-server",
    // The database tests' Node.js clients (pg, mysql2, redis from npm: pure-JavaScript protocol
    // code). A machine may have a Node.js of another origin that brings its own npm.
    "nodejs",
];

/// The package whose system service we stop.
const NGINX: &str = "nginx";

/// Where Debian's nginx (started by its init script) writes its master's pid.
const NGINX_PID_FILE: &str = "/run/nginx.pid";

/// Installs the missing [`PACKAGES`] (as root) and stops the system nginx if it runs.
pub fn ensure() -> Result<()> {
    let Some(missing) = missing_packages(PACKAGES)? else {
        step("apt", "dpkg-query not found: not a Debian system; install the tests' packages yourself:");
        step("apt", format!("  {}", PACKAGES.join(" ")));
        return Ok(());
    };
    if missing.is_empty() {
        step("apt", format!("all {} system packages already installed", PACKAGES.len()));
    } else {
        install(&missing)?;
    }
    stop_system_nginx(missing.contains(&NGINX));
    Ok(())
}

/// Installs Debian's `npm` when no `npm` is on PATH (Debian's nodejs comes without it).
pub fn ensure_npm() -> Result<()> {
    if process::find_in_path("npm").is_some() {
        return Ok(());
    }
    install(&["npm"])
}

/// Which of `packages` dpkg does not list as installed, in their order; `None` without dpkg.
fn missing_packages<'a>(packages: &[&'a str]) -> Result<Option<Vec<&'a str>>> {
    let mut query = Command::new("dpkg-query");
    query.args(["-W", "-f=${Package} ${Status}\\n"]).args(packages);
    let output = match query.stderr(Stdio::null()).output() {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("could not start `{}`", process::describe(&query))),
    };
    // Exit status 1 only means some packages are unknown to dpkg: those are missing too.
    if !matches!(output.status.code(), Some(0 | 1)) {
        bail!("`{}` failed ({})", process::describe(&query), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let installed = installed_packages(&stdout);
    Ok(Some(packages.iter().copied().filter(|package| !installed.contains(package)).collect()))
}

/// The packages `dpkg-query -f='${Package} ${Status}\n'` reports installed. Status is
/// `want ok state` (e.g. `install ok installed`, `hold ok installed`, `deinstall ok config-files`):
/// only the state says whether the files are there.
fn installed_packages(dpkg_query_output: &str) -> HashSet<&str> {
    dpkg_query_output
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let package = words.next()?;
            (words.last() == Some("installed")).then_some(package)
        })
        .collect()
}

/// `apt-get update`, then installs `missing`; as root only, else fails saying what to run.
fn install(missing: &[&str]) -> Result<()> {
    let list = missing.join(" ");
    if !is_root() {
        bail!(
            "the tests need Debian packages that are not installed: {list}. Install them as root \
             (`apt-get update && apt-get install -y --no-install-recommends {list}`) or run \
             `cargo xtask test` as root, which installs them"
        );
    }
    step("apt", format!("missing: {list}; installing them"));
    run_apt(apt_get().arg("update"))?;
    run_apt(apt_get().args(["install", "-y", "--no-install-recommends"]).args(missing))
        .with_context(|| format!("installing the tests' Debian packages ({list}) failed"))
}

/// Runs an apt command, saying which first: its output alone does not.
fn run_apt(cmd: &mut Command) -> Result<()> {
    step("apt", format!("running: {}", process::describe(cmd)));
    process::run(cmd)
}

/// `apt-get` that never stops to ask (debconf questions take their defaults).
fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Debian's nginx package starts the system nginx on port 80 where it can (systemd, or its init
/// script). The tests do not need it and run their own: stop it and keep it from starting again,
/// whatever the init. Acts when nginx was `just_installed`, or whenever the system one runs.
/// Best effort: a failure is reported, not fatal (the tests use free ports).
fn stop_system_nginx(just_installed: bool) {
    if systemd_runs() {
        let running = Command::new("systemctl")
            .args(["is-active", "--quiet", "nginx.service"])
            .status()
            .is_ok_and(|status| status.success());
        if (just_installed || running) && can_stop_nginx() {
            step("nginx", "stopping and disabling the system nginx (the tests run their own)");
            best_effort(Command::new("systemctl").args(["disable", "--now", "nginx.service"]));
        }
        return;
    }
    let pid = running_nginx_pid();
    if !(just_installed || pid.is_some()) || !can_stop_nginx() {
        return;
    }
    step("nginx", "disabling the system nginx's init script (the tests run their own)");
    best_effort(Command::new("update-rc.d").args(["nginx", "disable"]).stdout(Stdio::null()).stderr(Stdio::null()));
    if let Some(pid) = pid {
        step("nginx", format!("stopping the system nginx (pid {pid}, SIGQUIT)"));
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid, libc::SIGQUIT) } != 0 {
            step("nginx", format!("warning: could not stop pid {pid}: {}", io::Error::last_os_error()));
        }
    }
}

/// True when we may stop the system nginx; says what to do when we may not.
fn can_stop_nginx() -> bool {
    if is_root() {
        return true;
    }
    step("nginx", "warning: the system nginx is running; only root can stop it (the tests do not need it)");
    false
}

/// True when systemd is the init (what `sd_booted()` checks) and `systemctl` can talk to it.
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir() && find_in_path("systemctl").is_some()
}

/// The pid of the running system nginx's master, from its init script's pid file.
fn running_nginx_pid() -> Option<libc::pid_t> {
    let pid: libc::pid_t = fs::read_to_string(NGINX_PID_FILE).ok()?.trim().parse().ok()?;
    // 0 and negative pids would name process groups.
    if pid <= 0 {
        return None;
    }
    // SAFETY: signal 0 only checks that the process exists (EPERM: it does, but is not ours).
    let exists = unsafe { libc::kill(pid, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists.then_some(pid)
}

/// Runs `cmd`, reporting a failure instead of returning it.
fn best_effort(cmd: &mut Command) {
    if let Err(error) = process::run(cmd) {
        step("nginx", format!("warning: {error:#}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_installed_state_counts() {
        let output = "curl install ok installed\n\
                      nginx deinstall ok config-files\n\
                      gcc hold ok installed\n\
                      sqlite3 install ok half-installed\n\
                      golang-go unknown ok not-installed\n";
        let installed = installed_packages(output);
        assert_eq!(installed, HashSet::from(["curl", "gcc"]));
    }

    #[test]
    fn every_package_is_listed_once() {
        let unique: HashSet<_> = PACKAGES.iter().collect();
        assert_eq!(unique.len(), PACKAGES.len());
    }
}
