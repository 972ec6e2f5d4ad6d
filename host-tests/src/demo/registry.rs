//! A local OCI registry for the demo: Debian's `docker-registry`
//! (Distribution) on a free loopback port with its storage in a temp dir,
//! killed on drop — the way the oci crate's tests run one.

use anyhow::{bail, Context, Result};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "docker-registry";

/// A running registry.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _dir: tempfile::TempDir,
    log_path: PathBuf,
}

impl Registry {
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir().context("temp dir for the registry")?;
        let mut last_log = String::new();
        // A port taken between choosing and binding: try another.
        for attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let addr = format!("127.0.0.1:{port}");
            let config = format!(
                "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  secret: tideway-demo\n",
                dir.path().join("storage").display()
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config)?;
            let log_path = dir.path().join(format!("registry-{attempt}.log"));
            let log = std::fs::File::create(&log_path)?;
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| {
                    format!("could not run `{REGISTRY_BIN}` (Debian package docker-registry; `cargo xtask setup` installs it)")
                })?;
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    break;
                }
                let listening = std::fs::read_to_string(&log_path)
                    .map(|l| l.contains("listening on"))
                    .unwrap_or(false);
                if listening && TcpStream::connect(&addr).is_ok() {
                    return Ok(Self {
                        child,
                        addr,
                        _dir: dir,
                        log_path,
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        bail!("docker-registry did not start; its log:\n{last_log}")
    }

    /// Requests with `method` on a path containing `fragment`, from the
    /// registry's access log (proof the pull really went to it).
    pub fn count_requests(&self, method: &str, fragment: &str) -> usize {
        let needle = format!("\"{method} ");
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle) && l.contains(fragment))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
