//! A MariaDB server of the test's own (Debian's MariaDB 10.11) in a temporary directory, on a
//! free loopback port and a Unix socket, with a database `shop`; no grant tables (any user, no
//! password). Stopped and removed on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct MysqlServer {
    child: Child,
    directory: PathBuf,
    pub port: u16,
    pub socket: PathBuf,
}

impl MysqlServer {
    pub fn start() -> Self {
        let port = crate::http::free_port();
        let directory = std::env::temp_dir().join(format!("ddtrace-mysql-{}-{port}", std::process::id()));
        let data = directory.join("data");
        let socket = directory.join("mysqld.sock");
        std::fs::create_dir_all(&directory).unwrap();
        let installed = Command::new("mariadb-install-db")
            .args(["--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .unwrap_or_else(|e| panic!("mariadb-install-db does not run (cargo xtask test installs it): {e}"));
        assert!(installed.status.success(), "{}", String::from_utf8_lossy(&installed.stderr));
        let child = Command::new("mariadbd")
            .args(["--no-defaults", "--user=root", "--skip-grant-tables", "--bind-address=127.0.0.1"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--pid-file={}", directory.join("mysqld.pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("mariadbd does not start: {e}"));
        let server = Self { child, directory, port, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server.run("CREATE DATABASE IF NOT EXISTS shop") {
            assert!(Instant::now() < deadline, "mariadbd on port {port} does not answer");
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    /// Runs `sql` with the command-line client over the socket; whether it worked.
    pub fn run(&self, sql: &str) -> bool {
        Command::new("mariadb")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-u", "root", "-e", sql])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for MysqlServer {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our child; SIGTERM is mariadbd's normal shutdown.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}
