//! A private nginx (the distribution's binary, unmodified) for end-to-end tests: its own master
//! and workers, configuration, logs, temporary files, static files and TLS certificate, all in a
//! temporary directory, on free ports. Nothing of the system's nginx is used or touched.
use std::{
    net::TcpStream,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{http::free_port, tls::TestCertificate};

/// How long nginx gets to listen on its ports (it retries a busy port for 2.5 s before failing).
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// What the generated configuration holds beyond the fixed parts.
#[derive(Debug, Clone)]
pub struct NginxConfig {
    /// `worker_processes`.
    pub workers: u32,
    /// When set, `/api/...` is proxied to `http://127.0.0.1:<port>/api/...`: nginx is then a
    /// client too.
    pub upstream_port: Option<u16>,
    /// `large_client_header_buffers`: how many buffers of what size nginx reads long request
    /// heads into, after a first read of 1 KiB. Each header line must fit in one buffer.
    pub header_buffers: String,
}

impl Default for NginxConfig {
    fn default() -> Self {
        Self { workers: 2, upstream_port: None, header_buffers: "8 16k".to_string() }
    }
}

/// A running nginx master with its workers; killed with its whole process group on drop.
pub struct Nginx {
    child: Child,
    /// Clear-text HTTP: static files under [`Self::root`], `/fail` answers 503, `/api/` is
    /// proxied when configured.
    pub http_port: u16,
    /// HTTPS (`listen ... ssl`) serving the same routes, with [`Self::certificate`].
    pub https_port: u16,
    dir: PathBuf,
    certificate: TestCertificate,
}

impl Nginx {
    /// nginx with the default configuration (2 workers, no upstream).
    pub fn start() -> Self {
        Self::start_with(NginxConfig::default())
    }

    /// nginx with `config`; waits until both ports accept connections, and panics with nginx's
    /// error log if it does not get there.
    pub fn start_with(config: NginxConfig) -> Self {
        let http_port = free_port();
        let https_port = free_port();
        let dir = std::env::temp_dir().join(format!("ddtrace-nginx-{}-{http_port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        make_readable_dir(&dir);
        write_static_files(&dir.join("www"));
        let certificate = TestCertificate::make(&format!("nginx-{http_port}"));
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, configuration(&dir, http_port, https_port, &certificate, &config)).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            // In the foreground, so the test owns the master; master_process, so it has workers
            // as in production.
            .args(["-g", "daemon off; master_process on;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: the master and its workers die together on drop.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("nginx did not start: {e} (.ci/run installs Debian's nginx package)"));
        let mut nginx = Self { child, http_port, https_port, dir, certificate };
        nginx.wait_listening();
        nginx
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        for port in [self.http_port, self.https_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("nginx exited ({status}) before listening on {port}; its error log:\n{}", self.error_log());
                }
                assert!(
                    Instant::now() < deadline,
                    "nginx did not listen on {port} within {START_TIMEOUT:?}; its error log:\n{}",
                    self.error_log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The master's pid (the workers are its children).
    pub fn master_pid(&self) -> u32 {
        self.child.id()
    }

    /// The worker processes' pids.
    pub fn worker_pids(&self) -> Vec<u32> {
        let children = format!("/proc/{pid}/task/{pid}/children", pid = self.child.id());
        std::fs::read_to_string(children)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect()
    }

    /// `http://127.0.0.1:<http_port><path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// `https://localhost:<https_port><path>` (the certificate's name).
    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https_port)
    }

    /// The self-signed certificate of the HTTPS server (localhost and 127.0.0.1), for clients
    /// to trust.
    pub fn certificate(&self) -> &Path {
        &self.certificate.cert
    }

    /// The directory served as static files; tests may add files.
    pub fn root(&self) -> PathBuf {
        self.dir.join("www")
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_else(|e| format!("(no error log: {e})"))
    }

    /// nginx's access log so far (one line per request it served).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created for the master and its workers.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The whole configuration: everything nginx writes goes to `dir`.
fn configuration(
    dir: &Path,
    http_port: u16,
    https_port: u16,
    certificate: &TestCertificate,
    config: &NginxConfig,
) -> String {
    let dir = dir.display();
    let (cert, key) = (certificate.cert.display(), certificate.key.display());
    let upstream = match config.upstream_port {
        Some(port) => format!("location /api/ {{ proxy_pass http://127.0.0.1:{port}; }}"),
        None => String::new(),
    };
    let routes = format!("root {dir}/www;\n    location = /fail {{ return 503; }}\n    {upstream}");
    format!(
        r#"worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log {dir}/access.log;
  client_body_temp_path {dir}/client_body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  default_type application/octet-stream;
  # As Debian's default configuration: static bodies leave with sendfile(2), not write(2).
  sendfile on;
  client_header_buffer_size 1k;
  large_client_header_buffers {header_buffers};
  server {{
    listen 127.0.0.1:{http_port};
    {routes}
  }}
  server {{
    listen 127.0.0.1:{https_port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    {routes}
  }}
}}
"#,
        workers = config.workers,
        header_buffers = config.header_buffers,
    )
}

/// `users/42` (a small JSON body) and `big.bin` (256 KiB, sent in several sendfile calls).
fn write_static_files(www: &Path) {
    make_readable_dir(&www.join("users"));
    write_readable(&www.join("users/42"), b"{\"id\": 42}");
    let big: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    write_readable(&www.join("big.bin"), &big);
}

/// Workers run as `nobody` when the tests run as root: what they serve must be world-readable
/// whatever the umask.
fn make_readable_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn write_readable(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}
