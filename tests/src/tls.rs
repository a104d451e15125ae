//! TLS for the end-to-end tests: a certificate the test makes, and `tests/apps/tls_app.py`'s
//! HTTPS server and `requests` client under the real Python interpreter.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use crate::{target_app::python_executable, workspace_root};

/// A self-signed certificate for `localhost` and 127.0.0.1, made with the `openssl` command in
/// a directory of its own (removed on drop).
pub struct TestCertificate {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCertificate {
    pub fn make(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ddtrace-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let output = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap_or_else(|e| panic!("the openssl command is needed to make a test certificate: {e}"));
        assert!(output.status.success(), "openssl req failed: {}", String::from_utf8_lossy(&output.stderr));
        Self { dir, cert, key }
    }
}

impl Drop for TestCertificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `tls_app.py` process and the lines it prints.
pub struct TlsApp {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl TlsApp {
    /// The HTTPS server on `port`, once it listens.
    pub fn serve(port: u16, certificate: &TestCertificate) -> Self {
        let port = port.to_string();
        Self::spawn(&[
            Path::new("serve").as_os_str(),
            port.as_ref(),
            certificate.cert.as_os_str(),
            certificate.key.as_os_str(),
        ])
    }

    /// The `requests` client trusting `certificate`, once `requests` (and libssl) is loaded.
    pub fn client(certificate: &TestCertificate) -> Self {
        Self::spawn(&[Path::new("client").as_os_str(), certificate.cert.as_os_str()])
    }

    fn spawn(args: &[&std::ffi::OsStr]) -> Self {
        let script = workspace_root().join("tests/apps/tls_app.py");
        let mut child = Command::new(python_executable())
            .arg("-u")
            .arg(&script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 {} failed to start: {e}", script.display()));
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "tls_app.py {args:?} did not start (is `requests` installed?)");
        Self { child, stdin, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The client GETs `url`; returns the status.
    pub fn get(&mut self, url: &str) -> u16 {
        let stdin = self.stdin.as_mut().expect("client stdin open");
        writeln!(stdin, "get {url}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let prefix = format!("ok get {url} ");
        let status = line.trim().strip_prefix(&prefix).unwrap_or_else(|| panic!("client answered {line:?}"));
        status.parse().unwrap()
    }
}

impl Drop for TlsApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
