//! One demo "cluster": the pods of the service in one member cluster, as a
//! loopback HTTP/1.1 server with a latency, a capacity and a fault mode.
//!
//! Why not [`crate::backend::Backend`]: the scenario needs what a real
//! cluster does under trouble — a fixed number of request slots (so a slow
//! cluster also loses capacity and queues, the thing least-request balancing
//! reacts to), answering 503, and resetting connections (TCP RST, also on
//! kept-alive upstream connections). That needs control of the socket.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How a cluster answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 200 after the latency.
    None,
    /// 503 at once (the pods are up but refusing work).
    Status503,
    /// The connection is reset (RST) as soon as a request arrives.
    Reset,
}

impl Fault {
    fn code(self) -> u8 {
        match self {
            Fault::None => 0,
            Fault::Status503 => 1,
            Fault::Reset => 2,
        }
    }
    fn from_code(code: u8) -> Self {
        match code {
            1 => Fault::Status503,
            2 => Fault::Reset,
            _ => Fault::None,
        }
    }
}

/// What makes one cluster different from the others.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Short name (`hangzhou`); the member cluster is `cluster-<name>`.
    pub name: String,
    /// Service time of one request when healthy.
    pub latency: Duration,
    /// Requests served at once; more wait for a slot.
    pub capacity: usize,
    /// Relative cost (the TrafficPolicy's `destinations[].cost`).
    pub cost: f64,
}

struct Shared {
    name: String,
    latency_us: AtomicU64,
    fault: AtomicU8,
    capacity: usize,
    busy: Mutex<usize>,
    slot_freed: Condvar,
    served: AtomicU64,
    stopping: AtomicBool,
}

/// A running cluster; stops when dropped.
pub struct Cluster {
    pub spec: ClusterSpec,
    pub port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Cluster {
    pub fn start(spec: ClusterSpec) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            name: spec.name.clone(),
            latency_us: AtomicU64::new(spec.latency.as_micros() as u64),
            fault: AtomicU8::new(0),
            capacity: spec.capacity.max(1),
            busy: Mutex::new(0),
            slot_freed: Condvar::new(),
            served: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&accepting);
                std::thread::spawn(move || connection(stream, &shared));
            }
        });
        Ok(Self {
            spec,
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The member cluster's name in the Fleet (`cluster-hangzhou`).
    pub fn member(&self) -> String {
        format!("cluster-{}", self.spec.name)
    }

    /// Serve each request in `latency` from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Back to the spec's latency and no fault.
    pub fn heal(&self) {
        self.set_latency(self.spec.latency);
        self.set_fault(Fault::None);
    }

    pub fn set_fault(&self, fault: Fault) {
        // Kept-alive connections notice within IDLE_CHECK and are reset
        // too, as when the pods' node goes.
        self.shared.fault.store(fault.code(), Ordering::Relaxed);
    }

    /// Requests answered so far (any status).
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        // Wake the acceptor.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// How often an idle connection looks at the fault mode and at shutdown.
const IDLE_CHECK: Duration = Duration::from_millis(20);

/// Arrange for the close (when every handle of the socket is dropped) to be
/// an RST rather than a FIN: SO_LINGER with a zero timeout.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

enum Read {
    Line,
    /// The peer closed, the socket failed, the cluster stops, or the
    /// connection was reset by the fault: drop it.
    Gone,
}

/// One line into `line`; while waiting, watch for a reset fault.
fn read_line(reader: &mut BufReader<TcpStream>, line: &mut String, shared: &Shared) -> Read {
    loop {
        match reader.read_line(line) {
            Ok(0) => return Read::Gone,
            Ok(_) => return Read::Line,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if shared.stopping.load(Ordering::Relaxed) {
                    return Read::Gone;
                }
                if Fault::from_code(shared.fault.load(Ordering::Relaxed)) == Fault::Reset {
                    reset(reader.get_ref());
                    return Read::Gone;
                }
            }
            Err(_) => return Read::Gone,
        }
    }
}

/// One kept-alive connection: read a request head, answer, repeat.
fn connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_CHECK));
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        // Request line, then headers up to the blank line. Bodies are not
        // expected (the load is GETs); a Content-Length body is skipped.
        line.clear();
        if let Read::Gone = read_line(&mut reader, &mut line, shared) {
            return;
        }
        if line.trim().is_empty() {
            continue;
        }
        let mut content_length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            if let Read::Gone = read_line(&mut reader, &mut line, shared) {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("connection")
                    && value.eq_ignore_ascii_case("close")
                {
                    close = true;
                }
            }
        }
        if content_length > 0 {
            let mut body = vec![0u8; content_length];
            if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
                return;
            }
        }
        let fault = Fault::from_code(shared.fault.load(Ordering::Relaxed));
        if fault == Fault::Reset {
            reset(&writer);
            return;
        }
        let status = if fault == Fault::Status503 {
            "503 Service Unavailable"
        } else {
            serve_in_a_slot(shared);
            "200 OK"
        };
        // A fault switched on while this request waited: it fails too.
        if Fault::from_code(shared.fault.load(Ordering::Relaxed)) == Fault::Reset {
            reset(&writer);
            return;
        }
        shared.served.fetch_add(1, Ordering::Relaxed);
        let body = shared.name.as_bytes();
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\nx-backend: {}\r\ncontent-length: {}\r\n{}\r\n",
            shared.name,
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(body).is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

/// Wait for one of the cluster's slots, hold it for the latency (with a
/// little jitter, as real service times have), free it.
fn serve_in_a_slot(shared: &Shared) {
    {
        let Ok(mut busy) = shared.busy.lock() else {
            return;
        };
        while *busy >= shared.capacity {
            busy = match shared.slot_freed.wait(busy) {
                Ok(b) => b,
                Err(_) => return,
            };
        }
        *busy += 1;
    }
    let base = shared.latency_us.load(Ordering::Relaxed);
    // Deterministic per-request jitter of 0–25%, no RNG state to share.
    let jitter = base / 4 * (shared.served.load(Ordering::Relaxed) % 8) / 8;
    std::thread::sleep(Duration::from_micros(base + jitter));
    if let Ok(mut busy) = shared.busy.lock() {
        *busy = busy.saturating_sub(1);
    }
    shared.slot_freed.notify_one();
}
