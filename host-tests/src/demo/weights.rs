//! The drain phase's lever: `tideway serve-weights` serving the policy's
//! weights, the Fleet's `weightsEndpoint` pointing every rendered
//! WasmPlugin at it (`weightsSource`), the filter long-polling it, and
//! `tideway drain` / `tideway drain --undo` as an operator runs them.
//!
//! When the CLI has no `serve-weights`, the demo runs without the drain
//! phase and reports the gap: a drain faked by editing the filter's
//! configuration would not be `tideway drain`.

use super::DemoConfig;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// The weights API's host name inside the mesh (the rendered ServiceEntry's).
pub const WEIGHTS_HOST: &str = "tideway-weights.tideway-system.global";

/// A running weights server and the CLI that steers it.
pub struct WeightsControl {
    cli: PathBuf,
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub port: u16,
    token_file: PathBuf,
    /// The Fleet with `weightsEndpoint` set, for `tideway render`.
    pub fleet_file: PathBuf,
    /// Where the running Tideway Envoy's admin address is written for the
    /// dashboard (`--envoy-admin caller-sidecar=file:…`).
    pub admin_file: PathBuf,
    drained: Mutex<Vec<String>>,
}

impl WeightsControl {
    /// The dashboard's address (live while the demo runs).
    pub fn dashboard_url(&self) -> String {
        format!("{}/ui/", self.url)
    }
}

impl WeightsControl {
    /// Starts `tideway serve-weights` for the demo policy; `Err` is the gap
    /// to report when this CLI cannot.
    pub fn start(config: &DemoConfig) -> Result<Self, String> {
        let help = super::tideway(&config.tideway_cli, &["--help"]).unwrap_or_default();
        if !help.contains("serve-weights") || !help.contains("drain") {
            return Err(
                "drain phase not run: this `tideway` has no `serve-weights`/`drain` \
                 (a build without the weights API), so no operator drain can be shown"
                    .to_string(),
            );
        }
        Self::spawn(config).map_err(|e| format!("drain phase not run: {e:#}"))
    }

    fn spawn(config: &DemoConfig) -> Result<Self> {
        let dir = config.work_dir.join("weights");
        std::fs::create_dir_all(&dir)?;
        let token_file = dir.join("token");
        // The operator's write token: not a secret worth more than this
        // run (the server listens on loopback only).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        std::fs::write(
            &token_file,
            format!("demo-{}-{nanos:x}\n", std::process::id()),
        )?;
        // The dashboard: live while the demo runs, reading the Tideway
        // run's Envoy through the admin address the demo writes here.
        let admin_file = dir.join("envoy-admin-address");
        let _ = std::fs::remove_file(&admin_file);
        let mut ui_args: Vec<String> = vec![
            "--ui".into(),
            "--envoy-admin".into(),
            format!("caller-sidecar=file:{}", admin_file.display()),
        ];
        if let Ok(ui_dir) = crate::env::ui_dir() {
            ui_args.extend(["--ui-dir".into(), ui_dir.display().to_string()]);
        }
        let mut child = Command::new(&config.tideway_cli)
            .args(["serve-weights", "-f"])
            .arg(&config.policy_file)
            .arg("--fleet")
            .arg(&config.fleet_file)
            .args(["--listen", "127.0.0.1:0", "--token-file"])
            .arg(&token_file)
            .args(&ui_args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting tideway serve-weights")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from serve-weights"))?;
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        let url = first
            .trim()
            .strip_prefix("listening on ")
            .map(str::to_string)
            .ok_or_else(|| {
                anyhow!("tideway serve-weights printed {first:?}, not `listening on URL`")
            });
        let url = match url {
            Ok(u) => u,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .ok_or_else(|| anyhow!("no port in {url:?}"))?;
        let fleet_file = dir.join("fleet.json");
        write_fleet(&config.fleet_file, &fleet_file, port)?;
        Ok(Self {
            cli: config.tideway_cli.clone(),
            child,
            url,
            port,
            token_file,
            fleet_file,
            admin_file,
            drained: Mutex::new(Vec::new()),
        })
    }

    /// The Envoy cluster the rendered `weightsSource` names, with the
    /// endpoint istiod would make of the rendered ServiceEntry (STATIC,
    /// 127.0.0.1).
    pub fn envoy_cluster(&self, objects: &[Value]) -> Result<Value> {
        let source = objects
            .iter()
            .find(|o| o["kind"] == "WasmPlugin")
            .map(|p| &p["spec"]["pluginConfig"]["weightsSource"])
            .filter(|s| s.is_object())
            .ok_or_else(|| anyhow!("the rendered WasmPlugin has no pluginConfig.weightsSource"))?;
        let name = source["cluster"]
            .as_str()
            .ok_or_else(|| anyhow!("weightsSource.cluster missing: {source}"))?;
        Ok(json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.port}}}}
            ]}]}
        }))
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let token = self.token_file.display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--server", &self.url, "--token-file", &token]);
        super::tideway(&self.cli, &all)
    }

    /// `tideway drain MEMBER`.
    pub fn drain(&self, member: &str) -> Result<()> {
        self.cli(&["drain", member])?;
        if let Ok(mut d) = self.drained.lock() {
            d.push(member.to_string());
        }
        Ok(())
    }

    /// `tideway drain --undo` of everything drained.
    pub fn undrain_all(&self) -> Result<()> {
        let drained = self
            .drained
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        for member in drained {
            self.cli(&["drain", &member, "--undo"])?;
        }
        Ok(())
    }
}

impl Drop for WeightsControl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Fleet with `spec.weightsEndpoint` at the local weights server.
fn write_fleet(from: &Path, to: &Path, port: u16) -> Result<()> {
    let text = std::fs::read_to_string(from)?;
    let mut fleet: Value =
        yaml_serde::from_str(&text).with_context(|| format!("{} is not YAML", from.display()))?;
    if !fleet["spec"].is_object() {
        bail!("{}: no spec", from.display());
    }
    fleet["spec"]["weightsEndpoint"] = json!({
        "host": WEIGHTS_HOST,
        "port": port,
        "addresses": ["127.0.0.1"]
    });
    std::fs::write(to, serde_json::to_vec_pretty(&fleet)?)?;
    Ok(())
}
