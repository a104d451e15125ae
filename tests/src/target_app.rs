//! Target processes the tests instrument, driven step by step over stdin.
use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use crate::workspace_root;

/// The real interpreter behind `python3` (on these machines `python3` is a pyenv shell shim
/// that runs Python as a child: we must trace the interpreter itself).
pub fn python_executable() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
    .clone()
}

/// `tests/apps/sqlite_worker.py` under the real Python interpreter.
pub struct SqliteWorker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl SqliteWorker {
    pub fn spawn() -> Self {
        let script = workspace_root().join("tests/apps/sqlite_worker.py");
        let mut child = Command::new(python_executable())
            .arg("-u")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 {} failed to start: {e}", script.display()));
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
