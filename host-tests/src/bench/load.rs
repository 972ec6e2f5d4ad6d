//! A closed-loop HTTP/1.1 load generator for the steering benchmarks.
//!
//! Why our own: the steering figures need, per request, the client-side
//! latency, the status and *which backend answered* (the `x-backend` header
//! the loopback backends add), time-stamped, so that shares can be computed
//! over sliding windows around an injected failure. `wrk` reports none of
//! that per request. The client is deliberately minimal — one keep-alive
//! connection per request in flight, a pre-built request, a response parser
//! that understands `content-length` and chunked bodies — so that its own
//! cost is small and identical for every variant.
//!
//! Why one event loop (tokio, current thread) and not a thread per
//! connection: the client shares the machine's two cores with Envoy and the
//! backends. At 128 connections a thread each cost a sixth of a core at
//! 8,000 responses a second, each thread woken once per response; one
//! thread polling every connection wakes once per batch of ready responses
//! and leaves that CPU to the proxy under test.
//!
//! Loopback only: it connects to `127.0.0.1:<port>`.

use anyhow::{Context, Result};
use std::cell::Cell;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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
    /// Keep-alive connections = requests in flight.
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

/// How long one exchange may take before the connection is given up.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Run the load; `events` run on the calling thread at their offsets.
/// Samples come back sorted by completion time.
pub fn run(spec: &LoadSpec<'_>, mut events: Vec<Event<'_>>) -> Result<Vec<Sample>> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, spec.port));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the load client's runtime")?;
    let start = Instant::now();
    events.sort_by_key(|(at, _)| *at);
    let mut samples: Vec<Sample> = std::thread::scope(|scope| -> Result<_> {
        // Named, so that a profile tells the client's CPU from the backends'.
        let client = std::thread::Builder::new()
            .name("load-client".into())
            .spawn_scoped(scope, || {
                let next = Cell::new(0);
                runtime.block_on(async {
                    let connections =
                        (0..spec.concurrency.max(1)).map(|_| connection(spec, addr, &next, start));
                    futures_util::future::join_all(connections).await
                })
            })
            .context("could not start the load client's thread")?;
        for (at, event) in events {
            let now = start.elapsed();
            if at > now {
                std::thread::sleep(at - now);
            }
            event();
        }
        let per_connection = client
            .join()
            .map_err(|_| anyhow::anyhow!("the load client's thread panicked"))?;
        Ok(per_connection.into_iter().flatten().collect())
    })?;
    samples.sort_by_key(|s| s.done_us);
    if samples.is_empty() {
        anyhow::bail!("no requests completed against 127.0.0.1:{}", spec.port);
    }
    Ok(samples)
}

/// One keep-alive connection's closed loop: the next request goes when the
/// previous response has been read.
async fn connection(
    spec: &LoadSpec<'_>,
    addr: SocketAddr,
    next: &Cell<u64>,
    start: Instant,
) -> Vec<Sample> {
    let mut out = Vec::with_capacity(16_384);
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut line = Vec::with_capacity(256);
    // The request when there is no header function: built once.
    let fixed = build_request(spec.host, &[]);
    loop {
        if start.elapsed() >= spec.duration {
            break;
        }
        let seq = next.get();
        next.set(seq + 1);
        if spec.total.is_some_and(|t| seq >= t) {
            break;
        }
        let owned;
        let request: &[u8] = match spec.headers {
            None => &fixed,
            Some(h) => {
                owned = build_request(spec.host, &h(seq));
                &owned
            }
        };
        let t0 = Instant::now();
        let result = tokio::time::timeout(
            EXCHANGE_TIMEOUT,
            exchange(&mut conn, &mut line, addr, request, spec.backends),
        )
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no response")));
        let t1 = Instant::now();
        let (status, backend) = match result {
            Ok(r) => r,
            Err(_) => {
                conn = None;
                // Do not spin if Envoy is unreachable.
                tokio::time::sleep(Duration::from_millis(1)).await;
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

/// One line (through `\n`) into `line`, without its line ending; false at
/// the end of the stream.
async fn read_line(c: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> io::Result<bool> {
    line.clear();
    if c.read_until(b'\n', line).await? == 0 {
        return Ok(false);
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(true)
}

/// One request/response on the connection's keep-alive stream.
async fn exchange(
    conn: &mut Option<BufReader<TcpStream>>,
    line: &mut Vec<u8>,
    addr: SocketAddr,
    request: &[u8],
    backends: &[&str],
) -> io::Result<(u16, u8)> {
    if conn.is_none() {
        let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect"))??;
        stream.set_nodelay(true)?;
        *conn = Some(BufReader::with_capacity(8192, stream));
    }
    let Some(c) = conn.as_mut() else {
        return Err(bad("no connection"));
    };
    c.get_mut().write_all(request).await?;
    if !read_line(c, line).await? {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split(|b| *b == b' ')
        .nth(1)
        .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = false;
    let mut backend = NO_BACKEND;
    loop {
        if !read_line(c, line).await? {
            return Err(bad("headers cut short"));
        }
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            close = value.eq_ignore_ascii_case(b"close");
        } else if name.eq_ignore_ascii_case(b"x-backend") {
            backend = backends
                .iter()
                .position(|b| b.as_bytes() == value)
                .map_or(NO_BACKEND, |i| i as u8);
        }
    }
    if chunked {
        loop {
            if !read_line(c, line).await? {
                return Err(bad("chunked body cut short"));
            }
            let size = std::str::from_utf8(line)
                .ok()
                .and_then(|l| u64::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                .ok_or_else(|| bad("chunk size"))?;
            if size == 0 {
                // Trailers, then the blank line.
                while read_line(c, line).await? && !line.is_empty() {}
                break;
            }
            skip(c, size + 2).await?;
        }
    } else if let Some(n) = length {
        skip(c, n).await?;
    } else {
        close = true;
    }
    if close {
        *conn = None;
    }
    Ok((status, backend))
}

/// Read and drop exactly `n` bytes of body.
async fn skip(c: &mut BufReader<TcpStream>, n: u64) -> io::Result<()> {
    let copied = tokio::io::copy(&mut c.take(n), &mut tokio::io::sink()).await?;
    if copied != n {
        return Err(bad("body cut short"));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;

    #[test]
    fn every_request_is_answered_and_attributed_to_the_backend_that_served_it() {
        let backends = [
            Backend::start("east", false).expect("backend"),
            Backend::start("west", false).expect("backend"),
        ];
        backends[1].set_delay(Duration::from_millis(5));
        let names = ["east", "west"];
        let mut samples = Vec::new();
        for (i, backend) in backends.iter().enumerate() {
            let spec = LoadSpec {
                port: backend.port,
                host: "x",
                concurrency: 8,
                duration: Duration::from_secs(30),
                total: Some(200),
                backends: &names,
                headers: None,
            };
            let run = run(&spec, Vec::new()).expect("load");
            assert_eq!(run.len(), 200);
            assert!(run.iter().all(|s| s.ok() && usize::from(s.backend) == i));
            samples.extend(run);
        }
        // Sequence numbers are issued once each.
        let mut seqs: Vec<u64> = samples[200..].iter().map(|s| s.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..200).collect::<Vec<_>>());
        // The delayed backend's latencies include its delay.
        assert!(samples[200..].iter().all(|s| s.latency_us >= 5_000));
        assert_eq!(backends[0].served() + backends[1].served(), 400);
    }

    #[test]
    fn events_run_on_time_while_the_load_runs() {
        let backend = Backend::start("east", false).expect("backend");
        let names = ["east"];
        let spec = LoadSpec {
            port: backend.port,
            host: "x",
            concurrency: 4,
            duration: Duration::from_millis(600),
            total: None,
            backends: &names,
            headers: None,
        };
        let b = &backend;
        let events: Vec<Event<'_>> = vec![(
            Duration::from_millis(300),
            Box::new(move || b.set_status(503)),
        )];
        let samples = run(&spec, events).expect("load");
        let first = samples.iter().position(|s| s.status == 503).expect("a 503");
        assert!(samples[..first].iter().all(Sample::ok));
        assert!(samples[first..].iter().all(|s| s.status == 503));
        assert!(
            samples[first].done_us >= 300_000,
            "{}",
            samples[first].done_us
        );
    }

    #[test]
    fn a_refused_connection_is_a_transport_error_not_a_hang() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let spec = LoadSpec {
            port,
            host: "x",
            concurrency: 2,
            duration: Duration::from_millis(100),
            total: None,
            backends: &[],
            headers: None,
        };
        let samples = run(&spec, Vec::new()).expect("samples of errors");
        assert!(samples
            .iter()
            .all(|s| s.status == 0 && s.backend == NO_BACKEND));
    }
}
