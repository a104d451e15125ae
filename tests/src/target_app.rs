//! Target processes the tests instrument, driven step by step over stdin.
use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use crate::workspace_root;

/// The real interpreter behind `python3` (on these machines `python3` is a pyenv shell shim
/// that runs Python as a child: we must trace the interpreter itself).
pub fn python_executable() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let out =
            Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().expect("python3 runs");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
    .clone()
}

/// pyenv's CPython 3.`minor`: its interpreter. A missing one fails: the machine image has them.
pub fn pyenv_python(minor: u32) -> PathBuf {
    let root = std::env::var("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".pyenv"));
    let prefix = format!("3.{minor}.");
    std::fs::read_dir(root.join("versions"))
        .unwrap_or_else(|e| panic!("pyenv's versions under {}: {e}", root.display()))
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)))
        .unwrap_or_else(|| panic!("pyenv has no CPython 3.{minor} under {}", root.display()))
        .join(format!("bin/python3.{minor}"))
}

/// A Python script run by `python` that prints one line starting with `ready` once set up, then
/// waits for a line on stdin (or its end) to exit; killed when dropped.
pub struct ScriptChild {
    child: Child,
    ready: String,
}

impl ScriptChild {
    pub fn run(python: &std::path::Path, script: &str) -> Self {
        Self::spawn(python, &["-c", script])
    }

    /// `python` with `args` (a script's path and its arguments, say).
    pub fn spawn(python: &std::path::Path, args: &[&str]) -> Self {
        let mut child = Command::new(python)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs: {e}", python.display()));
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        assert!(ready.starts_with("ready"), "{} did not get ready: {ready:?}", python.display());
        Self { child, ready }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `ready ...` line.
    pub fn ready_line(&self) -> &str {
        self.ready.trim_end()
    }
}

impl Drop for ScriptChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tests/apps/sqlite_worker.py` (or another worker script, [`SqliteWorker::spawn_script`])
/// under the real Python interpreter.
pub struct SqliteWorker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl SqliteWorker {
    pub fn spawn() -> Self {
        Self::spawn_with_env(&[])
    }

    /// Spawns it with `env` added to its environment (e.g. `DD_SERVICE`, which the daemon reads
    /// from the target).
    pub fn spawn_with_env(env: &[(&str, &str)]) -> Self {
        Self::spawn_with_args(&[], env)
    }

    /// With `args` after the script on its command line (the script ignores them: they are for
    /// whatever reads command lines, such as the stable configuration's selectors).
    pub fn spawn_with_args(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_script("sqlite_worker.py", args, env)
    }

    /// Another worker script of `tests/apps` speaking the same stdin protocol (`ok <command>`),
    /// e.g. `redis_worker.py`.
    pub fn spawn_script(script: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(python_executable());
        command.arg("-u").arg(workspace_root().join("tests/apps").join(script));
        Self::spawn_command(command, args, env)
    }

    /// `tests/apps/node/<script>` under Node.js, with the modules `cargo xtask test` installed
    /// into `target/node-apps` (pg, mysql2, redis).
    pub fn spawn_node_script(script: &str, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new("node");
        command
            .arg(workspace_root().join("tests/apps/node").join(script))
            .env("NODE_PATH", workspace_root().join("target/node-apps/node_modules"));
        Self::spawn_command(command, &[], env)
    }

    fn spawn_command(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?} failed to start: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self { child, stdin, stdout }
    }

    /// Spawns it as `sh -c '<prefix> python3 -u sqlite_worker.py'` (e.g. a
    /// [`FakeContainer`](crate::container::FakeContainer)'s prefix), with `env` added.
    pub fn spawn_with_prefix(prefix: &str, env: &[(&str, &str)]) -> Self {
        let script = workspace_root().join("tests/apps/sqlite_worker.py");
        let command = format!("{prefix} {} -u {}", python_executable(), script.display());
        let mut child = Command::new("sh")
            .args(["-c", &command])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("sh -c {command} failed to start: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self { child, stdin, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a command and waits for its `ok` line.
    pub fn run(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("worker stdin open");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("ok {command}"), "worker answered {line:?} to {command:?}");
    }

    /// Kills the worker with `signal` and reaps it.
    pub fn kill(mut self, signal: i32) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.child.wait().unwrap();
    }

    /// Asks the worker to exit and waits for it.
    pub fn exit(mut self) {
        self.run("exit");
        drop(self.stdin.take());
        self.child.wait().unwrap();
    }
}

impl Drop for SqliteWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// gunicorn serving the Flask app `tests/apps/wsgi_sqlite_app.py` with sync workers on a free port.
pub struct Gunicorn {
    child: Child,
    pub port: u16,
}

impl Gunicorn {
    pub fn start(workers: u32) -> Self {
        Self::start_with(workers, &[])
    }

    /// With more gunicorn options (`--max-requests 5`: workers recycled after 5 requests).
    pub fn start_with(workers: u32, options: &[&str]) -> Self {
        Self::serve("wsgi_sqlite_app:app", workers, options)
    }

    /// Another WSGI application of `tests/apps` (`django_app:application`).
    pub fn serve(application: &str, workers: u32, options: &[&str]) -> Self {
        let port = crate::http::free_port();
        let child = Command::new(python_executable())
            .args(["-m", "gunicorn", "--workers", &workers.to_string(), "--bind", &format!("127.0.0.1:{port}")])
            .args(options)
            .args(["--chdir", &workspace_root().join("tests/apps").display().to_string(), application])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("gunicorn failed to start: {e} (pip install gunicorn; the README's test command does)")
            });
        let server = Self { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while crate::http::get(port, "/").is_err() {
            assert!(std::time::Instant::now() < deadline, "gunicorn did not answer on port {port}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        server
    }

    pub fn master_pid(&self) -> u32 {
        self.child.id()
    }

    /// One request; returns the pid of the worker that served it.
    pub fn request(&self) -> u32 {
        let (status, body) = crate::http::get(self.port, "/").expect("gunicorn answers");
        assert_eq!(status, 200, "{body}");
        body.split_whitespace().next().and_then(|pid| pid.parse().ok()).expect("the app answers its pid")
    }

    /// Stops the master (SIGTERM: it stops its workers) and waits for it.
    pub fn stop(mut self) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tests/apps/bench/http_server.py`: a threading HTTP/1.1 keep-alive server on an ephemeral
/// port (the HTTP benchmark's target), killed on drop.
pub struct KeepAliveServer {
    child: Child,
    pub port: u16,
}

impl KeepAliveServer {
    pub fn start() -> Self {
        let script = workspace_root().join("tests/apps/bench/http_server.py");
        let mut child = Command::new(python_executable())
            .arg("-u")
            .arg(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 {} failed to start: {e}", script.display()));
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        let port = ready.trim().strip_prefix("ready ").and_then(|p| p.parse().ok());
        let port = port.unwrap_or_else(|| panic!("the keep-alive server said {ready:?}, not `ready <port>`"));
        Self { child, port }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for KeepAliveServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
