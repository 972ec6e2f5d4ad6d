//! A closed-loop HTTP/1.1 load generator for the steering benchmarks.
//!
//! Why our own: the steering figures need, per request, the client-side
//! latency, the status and *which backend answered* (the `x-backend` header
//! the loopback backends add), time-stamped, so that shares can be computed
//! over sliding windows around an injected failure. `wrk` reports none of
//! that per request. The client is deliberately minimal — one keep-alive
//! connection per worker thread, a pre-built request, a response parser that
//! understands `content-length` and chunked bodies — so that its own cost is
//! small and identical for every variant.
//!
//! Loopback only: it connects to `127.0.0.1:<port>`.

use anyhow::{Context, Result};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `Sample::backend` when the response named no known backend (e.g. an
/// Envoy-generated 503 or a transport error).
pub const NO_BACKEND: u8 = u8::MAX;

/// One request's outcome.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The request's sequence number (0-based, in issue order).
    pub seq: u64,
    /// When the response completed, microseconds since the run started.
    pub done_us: u64,
    /// Client-side latency in microseconds (request written → body read).
    pub latency_us: u32,
    /// HTTP status; 0 for a transport error.
    pub status: u16,
    /// Index into [`LoadSpec::backends`], or [`NO_BACKEND`].
    pub backend: u8,
}

impl Sample {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Extra request headers for request number `seq`.
pub type HeaderFn<'a> = &'a (dyn Fn(u64) -> Vec<(String, String)> + Sync);

/// What load to offer.
pub struct LoadSpec<'a> {
    /// Envoy's listener on 127.0.0.1.
    pub port: u16,
    pub host: &'a str,
    /// Worker threads = connections = requests in flight.
    pub concurrency: usize,
    /// Stop issuing after this long…
    pub duration: Duration,
    /// …or after this many requests, whichever comes first.
    pub total: Option<u64>,
    /// Backend names, in the order `Sample::backend` indexes them.
    pub backends: &'a [&'a str],
    /// Per-request extra headers (`None`: just `Host`).
    pub headers: Option<HeaderFn<'a>>,
}

/// Something to do at an offset into the run (slow a backend, fail it).
pub type Event<'e> = (Duration, Box<dyn FnOnce() + 'e>);

/// Run the load; `events` run on the calling thread at their offsets.
/// Samples come back sorted by completion time.
pub fn run(spec: &LoadSpec<'_>, mut events: Vec<Event<'_>>) -> Result<Vec<Sample>> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, spec.port));
    let next = AtomicU64::new(0);
    let start = Instant::now();
    events.sort_by_key(|(at, _)| *at);
    let mut samples: Vec<Sample> = std::thread::scope(|scope| -> io::Result<_> {
        // Named, so that a profile tells the client's CPU from the backends'.
        let workers = (0..spec.concurrency.max(1))
            .map(|_| {
                std::thread::Builder::new()
                    .name("load-client".into())
                    .spawn_scoped(scope, || worker(spec, addr, &next, start))
            })
            .collect::<io::Result<Vec<_>>>()?;
        for (at, event) in events {
            let now = start.elapsed();
            if at > now {
                std::thread::sleep(at - now);
            }
            event();
        }
        Ok(workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect())
    })
    .context("could not start the load's client threads")?;
    samples.sort_by_key(|s| s.done_us);
    if samples.is_empty() {
        anyhow::bail!("no requests completed against 127.0.0.1:{}", spec.port);
    }
    Ok(samples)
}

fn worker(spec: &LoadSpec<'_>, addr: SocketAddr, next: &AtomicU64, start: Instant) -> Vec<Sample> {
    let mut out = Vec::with_capacity(16_384);
    let mut conn: Option<BufReader<TcpStream>> = None;
    let fixed = spec
        .headers
        .is_none()
        .then(|| build_request(spec.host, &[]));
    loop {
        if start.elapsed() >= spec.duration {
            break;
        }
        let seq = next.fetch_add(1, Ordering::Relaxed);
        if spec.total.is_some_and(|t| seq >= t) {
            break;
        }
        let owned;
        let request: &[u8] = match (&fixed, spec.headers) {
            (Some(r), _) => r,
            (None, Some(h)) => {
                owned = build_request(spec.host, &h(seq));
                &owned
            }
            (None, None) => unreachable!("fixed is built when there is no header function"),
        };
        let t0 = Instant::now();
        let result = exchange(&mut conn, addr, request, spec.backends);
        let t1 = Instant::now();
        let (status, backend) = match result {
            Ok(r) => r,
            Err(_) => {
                conn = None;
                // Do not spin if Envoy is unreachable.
                std::thread::sleep(Duration::from_millis(1));
                (0, NO_BACKEND)
            }
        };
        out.push(Sample {
            seq,
            done_us: t1.duration_since(start).as_micros() as u64,
            latency_us: u32::try_from(t1.duration_since(t0).as_micros()).unwrap_or(u32::MAX),
            status,
            backend,
        });
    }
    out
}

fn build_request(host: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut r = format!("GET / HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        r.push_str(name);
        r.push_str(": ");
        r.push_str(value);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// One request/response on the worker's keep-alive connection.
fn exchange(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: SocketAddr,
    request: &[u8],
    backends: &[&str],
) -> io::Result<(u16, u8)> {
    if conn.is_none() {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        *conn = Some(BufReader::with_capacity(8192, stream));
    }
    let Some(c) = conn.as_mut() else {
        return Err(bad("no connection"));
    };
    c.get_mut().write_all(request)?;
    let mut line = String::new();
    if c.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = false;
    let mut backend = NO_BACKEND;
    loop {
        line.clear();
        if c.read_line(&mut line)? == 0 {
            return Err(bad("headers cut short"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("x-backend") {
            backend = backends
                .iter()
                .position(|b| *b == value)
                .map_or(NO_BACKEND, |i| i as u8);
        }
    }
    if chunked {
        loop {
            line.clear();
            c.read_line(&mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("chunk size"))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    line.clear();
                    if c.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            io::copy(&mut c.by_ref().take(size + 2), &mut io::sink())?;
        }
    } else if let Some(n) = length {
        let copied = io::copy(&mut c.by_ref().take(n), &mut io::sink())?;
        if copied != n {
            return Err(bad("body cut short"));
        }
    } else {
        close = true;
    }
    if close {
        *conn = None;
    }
    Ok((status, backend))
}

/// Latency percentiles (µs) of some samples: (p50, p99, p99.9).
pub fn latency_percentiles<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> (f64, f64, f64) {
    let mut l: Vec<u32> = samples.into_iter().map(|s| s.latency_us).collect();
    l.sort_unstable();
    use super::stats::percentile_sorted as p;
    (p(&l, 50.0), p(&l, 99.0), p(&l, 99.9))
}

/// Fail the run loudly if the load never reached Envoy.
pub fn check_some_ok(samples: &[Sample], what: &str) -> Result<()> {
    let ok = samples.iter().filter(|s| s.ok()).count();
    if ok == 0 {
        return Err(anyhow::anyhow!(
            "{what}: no successful responses in {} requests",
            samples.len()
        ))
        .context("is Envoy routing to the backends?");
    }
    Ok(())
}
