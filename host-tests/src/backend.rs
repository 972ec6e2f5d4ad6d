//! A loopback HTTP backend standing for one member cluster.
//!
//! It records the headers each request arrived with (what the filter and
//! Envoy did to them is the thing under test) and can be made slow or made
//! to fail while running, to drive the scheduler.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The headers one request arrived with (names lowercase).
/// A recorded request: `:path`, then its headers (names lowercased).
pub type RecordedHeaders = Vec<(String, String)>;

struct Shared {
    name: String,
    delay_us: AtomicU64,
    status: AtomicU16,
    served: AtomicU64,
    recorded: Mutex<Vec<RecordedHeaders>>,
    bodies: Mutex<Vec<Vec<u8>>>,
    record: bool,
}

/// A running backend; stops when dropped.
pub struct Backend {
    pub port: u16,
    shared: Arc<Shared>,
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
}

impl Backend {
    /// Start a backend named `name` on a free loopback port, with `workers`
    /// threads (a slow backend needs enough to keep concurrent requests
    /// from queueing behind each other).
    pub fn start(name: &str, workers: usize, record: bool) -> anyhow::Result<Self> {
        let server = tiny_http::Server::http("127.0.0.1:0")
            .map_err(|e| anyhow::anyhow!("backend {name}: could not listen on loopback: {e}"))?;
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .ok_or_else(|| anyhow::anyhow!("backend {name}: no IP address"))?;
        let server = Arc::new(server);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            delay_us: AtomicU64::new(0),
            status: AtomicU16::new(200),
            served: AtomicU64::new(0),
            recorded: Mutex::new(Vec::new()),
            bodies: Mutex::new(Vec::new()),
            record,
        });
        let threads = (0..workers.max(1))
            .map(|_| {
                let server = Arc::clone(&server);
                let shared = Arc::clone(&shared);
                // Named, so that a profile tells the backends' CPU apart.
                std::thread::Builder::new()
                    .name(format!("backend-{name}"))
                    .spawn(move || serve(&server, &shared))
            })
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| anyhow::anyhow!("backend {name}: could not start a thread: {e}"))?;
        Ok(Self {
            port,
            shared,
            server,
            threads,
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Answer every request after `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Answer every request with `status`.
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::Relaxed);
    }

    /// Requests served so far.
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// The recorded requests' bodies, draining the record.
    pub fn take_bodies(&self) -> Vec<Vec<u8>> {
        self.shared
            .bodies
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    /// The recorded requests' headers, draining the record.
    pub fn take_recorded(&self) -> Vec<RecordedHeaders> {
        self.shared
            .recorded
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.server.unblock();
        for _ in 1..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, shared: &Shared) {
    while let Ok(mut request) = server.recv() {
        let mut body = Vec::new();
        let _ = std::io::Read::read_to_end(request.as_reader(), &mut body);
        if shared.record {
            // The request line's path first, as `:path`.
            let headers: RecordedHeaders =
                std::iter::once((":path".to_string(), request.url().to_string()))
                    .chain(request.headers().iter().map(|h| {
                        (
                            h.field.as_str().as_str().to_ascii_lowercase(),
                            h.value.as_str().to_string(),
                        )
                    }))
                    .collect();
            if let Ok(mut recorded) = shared.recorded.lock() {
                recorded.push(headers);
            }
            if let Ok(mut bodies) = shared.bodies.lock() {
                bodies.push(body);
            }
        }
        let delay = shared.delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        shared.served.fetch_add(1, Ordering::Relaxed);
        let status = shared.status.load(Ordering::Relaxed);
        let mut response =
            tiny_http::Response::from_string(shared.name.clone()).with_status_code(status);
        if let Ok(h) = tiny_http::Header::from_bytes(&b"x-backend"[..], shared.name.as_bytes()) {
            response.add_header(h);
        }
        let _ = request.respond(response);
    }
}
