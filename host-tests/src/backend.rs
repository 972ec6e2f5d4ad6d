//! A loopback HTTP backend standing for one member cluster.
//!
//! It records the headers each request arrived with (what the filter and
//! Envoy did to them is the thing under test) and can be made slow or made
//! to fail while running, to drive the scheduler.
//!
//! Why hyper on one tokio thread, not a thread per request: the benchmarks
//! run the backends on the same two cores as Envoy and the load client. A
//! thread pool behind a connection-reading thread (tiny_http's design, used
//! here before) took two thirds of a core at 8,000 requests a second
//! (three backends, per-thread schedstat), mostly hand-offs between
//! threads: CPU taken from the proxy under test. An event loop serves any
//! number of slow requests at once without a thread each. Delays are timed
//! to the microsecond on one timerfd per backend ([`timer`]), not on
//! tokio's timer, whose millisecond ticks would both lengthen every delay
//! and release together every request that fell due in the same
//! millisecond, bunching the load a benchmark offers.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    delays: Delays,
}

/// A running backend; stops when dropped (its listener and every
/// connection close).
pub struct Backend {
    pub port: u16,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Start a backend named `name` on a free loopback port. It serves any
    /// number of concurrent requests without queueing them, each after the
    /// delay set by [`Backend::set_delay`]; `record` keeps every request's
    /// headers and body for [`Backend::take_recorded`] / [`Backend::take_bodies`].
    pub fn start(name: &str, record: bool) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| anyhow::anyhow!("backend {name}: could not listen on loopback: {e}"))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("backend {name}: could not start its runtime: {e}"))?;
        let (delays, due) = Delays::new();
        let timerfd = {
            let _in_runtime = runtime.enter();
            new_timerfd().map_err(|e| anyhow::anyhow!("backend {name}: no timerfd: {e}"))?
        };
        let shared = Arc::new(Shared {
            name: name.to_string(),
            delay_us: AtomicU64::new(0),
            status: AtomicU16::new(200),
            served: AtomicU64::new(0),
            recorded: Mutex::new(Vec::new()),
            bodies: Mutex::new(Vec::new()),
            record,
            delays,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = Arc::clone(&shared);
        // Named, so that a profile tells the backends' CPU apart.
        let thread = std::thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let name = serving.name.clone();
                    let accepting = accept(listener, serving, stopped);
                    tokio::pin!(accepting);
                    // Serving ends when the backend is stopped; the timer
                    // runs until then (its senders live as long as the
                    // backend), and should it fail, requests are answered
                    // at once rather than never.
                    tokio::select! {
                        () = &mut accepting => {}
                        failed = timer(timerfd, due) => {
                            if let Err(e) = failed {
                                eprintln!("backend {name}: its timer failed, delays are off: {e}");
                            }
                            accepting.await;
                        }
                    }
                });
                // Dropping the runtime drops every connection task: their
                // sockets close, as a stopped server's do.
                drop(runtime);
            })
            .map_err(|e| anyhow::anyhow!("backend {name}: could not start its thread: {e}"))?;
        Ok(Self {
            port,
            shared,
            stop: Some(stop),
            thread: Some(thread),
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

    /// The delay set now.
    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.shared.delay_us.load(Ordering::Relaxed))
    }

    /// Answer every request with `status`.
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::Relaxed);
    }

    /// Requests answered so far.
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors, say: try again rather than stop serving.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request| answer(request, Arc::clone(&shared)));
            // A connection Envoy closes or resets ends here; nothing to report.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    // The whole body is read before answering, as a real service would.
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if shared.record {
        // The request line's path first, as `:path`.
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.to_string(), |p| p.as_str().to_string());
        let headers: RecordedHeaders = std::iter::once((":path".to_string(), path))
            .chain(parts.headers.iter().map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            }))
            .collect();
        if let Ok(mut recorded) = shared.recorded.lock() {
            recorded.push(headers);
        }
        if let Ok(mut bodies) = shared.bodies.lock() {
            bodies.push(body.to_vec());
        }
    }
    let delay = shared.delay_us.load(Ordering::Relaxed);
    if delay > 0 {
        shared.delays.wait(Duration::from_micros(delay)).await;
    }
    shared.served.fetch_add(1, Ordering::Relaxed);
    let status = shared.status.load(Ordering::Relaxed);
    let mut response = Response::new(Full::new(Bytes::from(shared.name.clone())));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    if let Ok(value) = hyper::header::HeaderValue::from_str(&shared.name) {
        headers.insert("x-backend", value);
    }
    Ok(response)
}

/// Where requests wait out their delay: each registers its deadline with
/// the backend's [`timer`] task and is woken at it.
struct Delays {
    register: tokio::sync::mpsc::UnboundedSender<Due>,
}

/// One waiting request: when, and whom to wake.
struct Due {
    at: Instant,
    seq: u64,
    wake: tokio::sync::oneshot::Sender<()>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    /// Reversed, so that `BinaryHeap` pops the earliest deadline.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl Delays {
    fn new() -> (Self, tokio::sync::mpsc::UnboundedReceiver<Due>) {
        let (register, due) = tokio::sync::mpsc::unbounded_channel();
        (Self { register }, due)
    }

    /// Return `delay` from now (at once if the timer has stopped).
    async fn wait(&self, delay: Duration) {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let (wake, woken) = tokio::sync::oneshot::channel();
        let due = Due {
            at: Instant::now() + delay,
            seq: SEQ.fetch_add(1, Ordering::Relaxed),
            wake,
        };
        if self.register.send(due).is_ok() {
            let _ = woken.await;
        }
    }
}

/// The backend's timer: the pending deadlines in a heap, the earliest one
/// armed on a timerfd (CLOCK_MONOTONIC, nanosecond resolution, the clock
/// `Instant` reads). Re-armed only when the earliest deadline changes, so a
/// steady stream of equal delays costs one `timerfd_settime` per expiry.
async fn timer(
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    mut due: tokio::sync::mpsc::UnboundedReceiver<Due>,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // A timer that cannot be armed ends the task with its error (see
    // `Backend::start`), rather than leaving requests waiting for ever.
    let arm = |wait: Duration| -> std::io::Result<()> {
        // A zero it_value would disarm the timer: wait at least 1 ns.
        let wait = wait.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a valid timerfd and a valid itimerspec.
        let set = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if set < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    let mut pending: std::collections::BinaryHeap<Due> = std::collections::BinaryHeap::new();
    let mut armed: Option<Instant> = None;
    loop {
        let now = Instant::now();
        while pending.peek().is_some_and(|d| d.at <= now) {
            if let Some(d) = pending.pop() {
                let _ = d.wake.send(());
            }
        }
        if let Some(at) = pending.peek().map(|d| d.at).filter(|&at| Some(at) != armed) {
            arm(at - now)?;
            armed = Some(at);
        }
        tokio::select! {
            registered = due.recv() => match registered {
                Some(d) => pending.push(d),
                // Every sender is gone: the backend has stopped.
                None => return Ok(()),
            },
            ready = fd.readable(), if armed.is_some() => {
                let mut guard = ready?;
                let mut expirations = [0u8; 8];
                // SAFETY: reading 8 bytes into an 8-byte buffer.
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), expirations.as_mut_ptr().cast(), expirations.len())
                };
                // One read drains a one-shot timerfd: it is not readable
                // again until it is re-armed and expires.
                guard.clear_ready();
                if n >= 0 {
                    armed = None;
                }
            }
        }
    }
}

/// A disarmed, non-blocking timerfd on CLOCK_MONOTONIC, registered with the
/// current tokio runtime.
fn new_timerfd() -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: timerfd_create has no preconditions; a non-negative result
    // is a new descriptor that we own from here on.
    let raw = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: the OwnedFd stays open for as long as the AsyncFd owns it.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    /// One request with a body, on a new connection (ureq's agent per
    /// call): (status, x-backend, body, latency).
    fn get(port: u16) -> (u16, String, String, Duration) {
        let started = Instant::now();
        let response = match ureq::request("GET", &format!("http://127.0.0.1:{port}/a?b=c"))
            .set("X-Probe", "One")
            .send_string("body")
        {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET: {e}"),
        };
        let status = response.status();
        let backend = response.header("x-backend").unwrap_or_default().to_string();
        let body = response.into_string().expect("body");
        (status, backend, body, started.elapsed())
    }

    #[test]
    fn answers_with_its_name_status_and_records_the_request() {
        let backend = Backend::start("east", true).expect("backend");
        backend.set_status(503);
        let (status, name, body, _) = get(backend.port);
        assert_eq!(
            (status, name.as_str(), body.as_str()),
            (503, "east", "east")
        );
        assert_eq!(backend.served(), 1);
        let recorded = backend.take_recorded();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0][0], (":path".to_string(), "/a?b=c".to_string()));
        assert!(recorded[0].contains(&("x-probe".to_string(), "One".to_string())));
        assert_eq!(backend.take_bodies(), vec![b"body".to_vec()]);
    }

    #[test]
    fn concurrent_slow_requests_wait_their_delay_each_and_never_queue() {
        let backend = Backend::start("east", false).expect("backend");
        let delay = Duration::from_millis(40);
        backend.set_delay(delay);
        let started = Instant::now();
        let latencies: Vec<Duration> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..64).map(|_| s.spawn(|| get(backend.port).3)).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client"))
                .collect()
        });
        // Never early: the timer fires at or after the deadline.
        assert!(latencies.iter().all(|l| *l >= delay), "{latencies:?}");
        // 64 requests one after another would take 2.56 s.
        assert!(started.elapsed() < delay * 16, "{:?}", started.elapsed());
        assert_eq!(backend.served(), 64);
    }

    #[test]
    fn a_delay_shortened_while_requests_wait_lets_later_ones_overtake() {
        let backend = Backend::start("east", false).expect("backend");
        backend.set_delay(Duration::from_millis(600));
        std::thread::scope(|s| {
            let slow = s.spawn(|| get(backend.port).3);
            std::thread::sleep(Duration::from_millis(100));
            backend.set_delay(Duration::from_millis(10));
            let fast = get(backend.port).3;
            assert!(fast < Duration::from_millis(300), "{fast:?}");
            assert!(slow.join().expect("client") >= Duration::from_millis(600));
        });
    }

    #[test]
    fn a_stopped_backend_refuses_connections() {
        let backend = Backend::start("east", false).expect("backend");
        let port = backend.port;
        drop(backend);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
