//! `tideway serve-weights` (the built CLI) as the Envoy-tier tests and the
//! demo run it: policies written to a temporary directory, a bearer token
//! file, the address read from the one line it prints, its stderr kept for
//! failure messages; killed on drop.

use anyhow::{anyhow, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

pub struct WeightsServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub port: u16,
    pub token_file: PathBuf,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl WeightsServer {
    /// Serve `policies` (YAML text) with `token`, listening on `listen`
    /// (`127.0.0.1:0` for a free port), with `extra` arguments (e.g. `--ui`).
    pub fn start(policies: &str, token: &str, listen: &str, extra: &[String]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let policy_file = dir.path().join("policies.yaml");
        std::fs::write(&policy_file, policies)?;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{token}\n"))?;
        let mut child = Command::new(crate::env::tideway_cli()?)
            .args(["serve-weights", "--listen", listen, "--policy"])
            .arg(&policy_file)
            .arg("--token-file")
            .arg(&token_file)
            .args(extra)
            .env_remove("TIDEWAY_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tideway serve-weights")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let log = |s: &Arc<Mutex<String>>| s.lock().map(|s| s.clone()).unwrap_or_default();
        let Some(url) = line
            .trim()
            .strip_prefix("listening on ")
            .map(str::to_string)
        else {
            let _ = child.kill();
            let _ = child.wait();
            // Give the stderr reader a moment to take the last words.
            std::thread::sleep(std::time::Duration::from_millis(100));
            return Err(anyhow!(
                "tideway serve-weights printed no address line ({line:?}); stderr: {}",
                log(&stderr)
            ));
        };
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("no port in {url:?}"))?;
        Ok(Self {
            child,
            url,
            port,
            token_file,
            stderr,
            _dir: dir,
        })
    }

    /// Run `tideway ARGS --server URL --token-file FILE`.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Command::new(crate::env::tideway_cli()?)
            .args(args)
            .arg("--server")
            .arg(&self.url)
            .arg("--token-file")
            .arg(&self.token_file)
            .output()
            .context("running tideway")
    }

    /// What the server logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WeightsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
