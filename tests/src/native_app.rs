//! Native target programs the tests build from `tests/apps/` (C with gcc, Rust with rustc, Go with
//! the go tool) and run: each prints "ready", waits for a line on stdin, works a given time and
//! exits.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::workspace_root;

/// Compiles `tests/apps/<source>` into `target/test-apps/<name>` with `compiler` and `flags`.
fn build(compiler: &str, source: &str, name: &str, flags: &[&str]) -> PathBuf {
    let dir = workspace_root().join("target/test-apps");
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join(name);
    let source = workspace_root().join("tests/apps").join(source);
    let result = Command::new(compiler)
        .args(flags)
        .arg("-o")
        .arg(&output)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("{compiler} cannot run: {e}"));
    assert!(
        result.status.success(),
        "{compiler} failed to build {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    // As the process's maps will name it (no `..`), for flags like --trace-function FILE:SYMBOL.
    std::fs::canonicalize(&output).unwrap()
}

/// `tests/apps/<source>` built by gcc as `name` with `flags` (e.g. `-fomit-frame-pointer`).
pub fn build_c(source: &str, name: &str, flags: &[&str]) -> PathBuf {
    build("gcc", source, name, flags)
}

/// `tests/apps/<source>` built by rustc, optimized, as `name`.
pub fn build_rust(source: &str, name: &str) -> PathBuf {
    build("rustc", source, name, &["-C", "opt-level=2", "--edition", "2021"])
}

/// `tests/apps/<source>` (a Go `main` package on the standard library only) built by `go build` as
/// `name`: static (no cgo, so no libc: Go's own raw system calls are what the daemon must see),
/// offline (no module proxy), with the build cache under `target/` so later builds are quick.
pub fn build_go(source: &str, name: &str) -> PathBuf {
    build_go_with(source, name, &[])
}

/// [`build_go`], stripped as release builds often are (`-ldflags=-s -w`: no symbol table, no
/// DWARF; Go's own function table stays).
pub fn build_go_stripped(source: &str, name: &str) -> PathBuf {
    build_go_with(source, name, &["-ldflags=-s -w"])
}

fn build_go_with(source: &str, name: &str, flags: &[&str]) -> PathBuf {
    let target = workspace_root().join("target");
    let dir = target.join("test-apps");
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join(name);
    let source = workspace_root().join("tests/apps").join(source);
    let result = Command::new("go")
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&output)
        .arg(&source)
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-buildvcs=false")
        .env("GOPROXY", "off")
        .env("GO111MODULE", "on")
        .env("GOCACHE", target.join("go-cache"))
        .env("GOPATH", target.join("go-path"))
        .output()
        .unwrap_or_else(|e| panic!("go cannot run (is golang-go installed? .ci/run installs it): {e}"));
    assert!(
        result.status.success(),
        "go build failed for {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::canonicalize(&output).unwrap()
}

/// A running native test program.
pub struct NativeApp {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Kept open: a program writing to a closed pipe would die of SIGPIPE.
    _stdout: BufReader<ChildStdout>,
}

impl NativeApp {
    /// Starts `program` with `args` and waits for its "ready" line.
    pub fn spawn(program: &Path, args: &[&str]) -> Self {
        Self::spawn_with_env(program, args, &[])
    }

    /// Same, with `env` added to its environment (the daemon reads `DD_*` settings there).
    pub fn spawn_with_env(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{} cannot start: {e}", program.display()));
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "{} did not start", program.display());
        let stdin = child.stdin.take();
        Self { child, stdin, _stdout: stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it start working.
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("go is sent once");
        writeln!(stdin, "go").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for it to finish its work and exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "pid {} still running after {timeout:?}", self.pid());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The CPU time it used so far (user + system), from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let ticks: u64 = fields.get(11..13).map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum()).unwrap_or(0);
        // SAFETY: plain libc call.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz.max(1))
    }
}

impl Drop for NativeApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
