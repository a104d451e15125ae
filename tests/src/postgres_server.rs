//! A PostgreSQL server of the test's own (Debian's PostgreSQL 15) in a temporary directory, on a
//! free loopback port, with a database `shop` and a user `app` (trust authentication), stopped
//! and removed on drop. It runs as the `postgres` user: the server refuses to run as root.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PostgresServer {
    child: Child,
    directory: PathBuf,
    pub port: u16,
}

/// `command` as the `postgres` user (setpriv execs it: the child is the program itself).
fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("setpriv");
    command.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
    command
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
}

impl PostgresServer {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// The same server accepting TLS (`ssl=on`, a certificate made for the test); clients choose
    /// with their `sslmode`.
    pub fn start_with_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let port = crate::http::free_port();
        let directory = std::env::temp_dir().join(format!("ddtrace-pg-{}-{port}", std::process::id()));
        let data = directory.join("data");
        std::fs::create_dir_all(&directory).unwrap();
        run(Command::new("chown").arg("postgres:postgres").arg(&directory));
        run(as_postgres(&format!("{BIN}/initdb"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(&data)
            .stdout(Stdio::null()));
        let mut ssl = vec!["-c".to_string(), "ssl=off".to_string()];
        if tls {
            let certificate = crate::tls::TestCertificate::make("postgres");
            let (cert, key) = (directory.join("server.crt"), directory.join("server.key"));
            std::fs::copy(&certificate.cert, &cert).unwrap();
            std::fs::copy(&certificate.key, &key).unwrap();
            // The server refuses a key others can read.
            run(Command::new("chown").arg("postgres:postgres").arg(&cert).arg(&key));
            run(Command::new("chmod").arg("600").arg(&key));
            ssl = [
                "ssl=on".to_string(),
                format!("ssl_cert_file={}", cert.display()),
                format!("ssl_key_file={}", key.display()),
            ]
            .into_iter()
            .flat_map(|setting| ["-c".to_string(), setting])
            .collect();
        }
        let child = as_postgres(&format!("{BIN}/postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&directory)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(&ssl)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("postgres does not start (cargo xtask test installs it): {e}"));
        let server = Self { child, directory, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server.ready() {
            assert!(Instant::now() < deadline, "postgres on port {port} is not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        server.psql("CREATE USER app");
        server.psql("CREATE DATABASE shop OWNER app");
        server
    }

    fn ready(&self) -> bool {
        Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `sql` as the superuser.
    pub fn psql(&self, sql: &str) {
        run(Command::new("psql").args([
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-c",
            sql,
        ]));
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // SIGINT: the fast shutdown.
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}
