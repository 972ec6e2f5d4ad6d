//! Headless Chromium (Debian's `chromium`) driven over the DevTools
//! protocol, as a user's browser: load a page, read and click its DOM,
//! collect its console errors and uncaught exceptions, take a screenshot.
//!
//! A small client of our own over a WebSocket (tungstenite) rather than a
//! browser-automation crate: the tests need six commands of the protocol,
//! and the crates that wrap it pull in an async stack or download a
//! browser. One page per browser, attached in flat session mode
//! (`Target.attachToTarget {flatten: true}`), so every command and event
//! carries the page's session id.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

/// The Chromium binary (`chromium`, or `chromium-browser` elsewhere).
pub fn chromium() -> Result<&'static str> {
    for bin in ["chromium", "chromium-browser"] {
        if Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(bin);
        }
    }
    bail!("chromium is not installed (Debian package chromium; `cargo xtask setup` installs it)")
}

/// One headless browser with one page.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    session: String,
    /// Every event received so far (console messages, exceptions, loads).
    events: Vec<Value>,
}

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl Browser {
    /// Start Chromium headless on a free DevTools port and open a blank page.
    pub fn launch() -> Result<Self> {
        let bin = chromium()?;
        let profile = tempfile::tempdir()?;
        let child = Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1360,1500",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromium")?;
        // Chromium writes its port and browser endpoint here once it listens.
        let active = profile.path().join("DevToolsActivePort");
        let start = Instant::now();
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&active) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break (port.trim().to_string(), path.trim().to_string());
                }
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("chromium did not open its DevTools port within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let addr = format!("127.0.0.1:{port}");
        let stream = TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
        // A bounded handshake, then short reads so the event pump can
        // check its deadlines.
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let (ws, _) = tungstenite::client(format!("ws://{addr}{path}"), stream)
            .map_err(|e| anyhow!("DevTools WebSocket handshake: {e}"))?;
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut browser = Self {
            child,
            _profile: profile,
            ws,
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
        };
        let target = browser.send(None, "Target.createTarget", json!({"url": "about:blank"}))?;
        let target_id = target["targetId"]
            .as_str()
            .ok_or_else(|| anyhow!("Target.createTarget: no targetId in {target}"))?
            .to_string();
        let attached = browser.send(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        )?;
        browser.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("Target.attachToTarget: no sessionId in {attached}"))?
            .to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({}))?;
        }
        Ok(browser)
    }

    /// A command to the page; its result.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let session = self.session.clone();
        self.send(Some(&session), method, params)
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(message.to_string()))
            .map_err(|e| anyhow!("{method}: sending: {e}"))?;
        let start = Instant::now();
        loop {
            if start.elapsed() > COMMAND_TIMEOUT {
                bail!("{method}: no answer within {COMMAND_TIMEOUT:?}");
            }
            let Some(value) = self.read_one()? else {
                continue;
            };
            if value.get("id").and_then(Value::as_u64) == Some(id) {
                if let Some(error) = value.get("error") {
                    bail!("{method}: {error}");
                }
                return Ok(value.get("result").cloned().unwrap_or(Value::Null));
            }
            self.events.push(value);
        }
    }

    /// One message, or `None` when nothing arrived within the read timeout.
    fn read_one(&mut self) -> Result<Option<Value>> {
        match self.ws.read() {
            Ok(Message::Text(text)) => Ok(Some(serde_json::from_str(text.as_str())?)),
            Ok(_) => Ok(None),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(anyhow!("DevTools connection: {e}")),
        }
    }

    /// Load `url` and wait for its load event.
    pub fn navigate(&mut self, url: &str) -> Result<()> {
        let before = self.events.len();
        self.call("Page.navigate", json!({"url": url}))?;
        let start = Instant::now();
        loop {
            if self.events[before..]
                .iter()
                .any(|e| e["method"] == "Page.loadEventFired")
            {
                return Ok(());
            }
            if start.elapsed() > COMMAND_TIMEOUT {
                bail!("{url} did not load within {COMMAND_TIMEOUT:?}");
            }
            if let Some(v) = self.read_one()? {
                self.events.push(v);
            }
        }
    }

    /// Evaluate a JavaScript expression in the page (promises awaited); its
    /// value. An exception is an error with its description.
    pub fn evaluate(&mut self, expression: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            bail!(
                "{expression}: {}",
                ex["exception"]["description"]
                    .as_str()
                    .unwrap_or(&ex.to_string())
            );
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluate `expression` until it is truthy (its value), or fail after
    /// `timeout` with `what`.
    pub fn wait_for(&mut self, what: &str, expression: &str, timeout: Duration) -> Result<Value> {
        let start = Instant::now();
        loop {
            let v = self.evaluate(expression)?;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return Ok(v);
            }
            if start.elapsed() > timeout {
                bail!("{what}: not within {timeout:?} (last value {v})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Console errors, uncaught exceptions and error log entries (failed
    /// loads, CSP violations) seen so far.
    pub fn errors(&mut self) -> Result<Vec<String>> {
        // Pump what is pending.
        self.evaluate("1")?;
        Ok(self
            .events
            .iter()
            .filter_map(|e| match e["method"].as_str()? {
                "Runtime.exceptionThrown" => Some(format!(
                    "exception: {}",
                    e["params"]["exceptionDetails"]["exception"]["description"]
                        .as_str()
                        .unwrap_or(&e["params"]["exceptionDetails"].to_string())
                )),
                "Runtime.consoleAPICalled" if e["params"]["type"] == "error" => {
                    Some(format!("console.error: {}", e["params"]["args"]))
                }
                "Log.entryAdded" if e["params"]["entry"]["level"] == "error" => Some(format!(
                    "log: {} {}",
                    e["params"]["entry"]["text"].as_str().unwrap_or(""),
                    e["params"]["entry"]["url"].as_str().unwrap_or("")
                )),
                _ => None,
            })
            .collect())
    }

    /// A PNG of the page as it is rendered now.
    pub fn screenshot(&mut self, path: &Path) -> Result<()> {
        use base64::Engine as _;
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )?;
        let data = r["data"]
            .as_str()
            .ok_or_else(|| anyhow!("Page.captureScreenshot: no data"))?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
