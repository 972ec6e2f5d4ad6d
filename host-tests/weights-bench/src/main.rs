//! `tideway-weights-bench`: the weights API under the load it is built for —
//! every sidecar of a fleet holding a long-poll open — measured on the real
//! `tideway serve-weights` binary over loopback.
//!
//! What it measures (a benchmark, not a test: it prints, it does not judge):
//! - the server's CPU and resident memory with N pollers held (idle: no
//!   change), from `/proc/<pid>`;
//! - for each of K changes (a `POST /v1/drain` toggling one cluster), the
//!   time from sending the change to each poller receiving the new version,
//!   and to the last of the N receiving it (p50/p99 over the changes);
//! - the server CPU time each change costs (N answers and N new polls).
//!
//! Each poller is one keep-alive HTTP/1.1 connection that, like the filter,
//! sends `If-None-Match: "<version>"` with `wait=`, and on a 200 polls again
//! at once with the new ETag. The pollers run in this process on the same
//! cores as the server, so the propagation times include the clients' own
//! scheduling: an upper bound for the server's share.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(name = "tideway-weights-bench", about, long_about = None)]
struct Args {
    /// Long-polling clients held open.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Changes to propagate (each one a drain or undrain).
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Services in the generated policies (three clusters each).
    #[arg(long, default_value_t = 20)]
    services: usize,
    /// The `tideway` binary (default: target/release/tideway next to this one).
    #[arg(long)]
    tideway: Option<PathBuf>,
    /// Seconds the pollers are held idle while the server's CPU is measured.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
}

const TOKEN: &str = "bench-token-5e1d";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fds = raise_open_file_limit(args.clients as u64 * 2 + 1024);
    if fds < args.clients as u64 + 256 {
        bail!(
            "the open-file limit is {fds}; {} clients need more (run as root, or lower --clients)",
            args.clients
        );
    }
    let tideway = match &args.tideway {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench's directory")?
            .join("tideway"),
    };
    if !tideway.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p tideway-controller --bin tideway` (or pass --tideway)",
            tideway.display()
        );
    }
    let dir = tempfile::tempdir()?;
    write_policies(dir.path(), args.services)?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN)?;
    let mut server = Server::start(&tideway, dir.path(), &token_file)?;
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(&args, &server));
    server.stop();
    let report = result?;
    report.print(&args);
    Ok(())
}

/// `services` policies named svc-NN over clusters east, west, north.
fn write_policies(dir: &std::path::Path, services: usize) -> anyhow::Result<()> {
    for i in 0..services {
        let text = format!(
            "apiVersion: traffic.tideway.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: svc-{i:02}\n  namespace: bench\nspec:\n  fleet: bench\n  service:\n    name: svc-{i:02}\n    port: 8080\n  destinations:\n  - cluster: east\n    weight: 50\n  - cluster: west\n    weight: 30\n  - cluster: north\n    weight: 20\n"
        );
        std::fs::write(dir.join(format!("svc-{i:02}.yaml")), text)?;
    }
    Ok(())
}

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(
        tideway: &std::path::Path,
        policies: &std::path::Path,
        token: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(tideway)
            .args(["serve-weights", "--listen", "127.0.0.1:0", "--policy"])
            .arg(policies)
            .arg("--token-file")
            .arg(token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", tideway.display()))?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .with_context(|| format!("serve-weights said {line:?}"))?
            .to_string();
        Ok(Self { child, addr })
    }

    /// (CPU seconds so far, resident KiB now, peak resident KiB).
    fn usage(&self) -> anyhow::Result<(f64, u64, u64)> {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = stat.rsplit_once(')').context("/proc/pid/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // SAFETY: sysconf reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((ticks as f64 / hz, kib("VmRSS:"), kib("VmHWM:")))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The soft limit raised to `want` (and the hard one, as root); returns the soft limit now.
fn raise_open_file_limit(want: u64) -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        if l.rlim_max < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return want;
            }
        }
        l.rlim_cur = l.rlim_max.max(l.rlim_cur);
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
    }
    l.rlim_cur
}

struct Report {
    clients: usize,
    baseline_rss_kib: u64,
    connect_secs: f64,
    idle_cpu_percent: f64,
    held_rss_kib: u64,
    peak_rss_kib: u64,
    /// Per change: every poller's delay.
    per_change: Vec<Vec<Duration>>,
    cpu_per_change_ms: f64,
    lost: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

impl Report {
    fn print(&self, args: &Args) {
        let mut all: Vec<Duration> = self.per_change.iter().flatten().copied().collect();
        all.sort();
        let mut last: Vec<Duration> = self
            .per_change
            .iter()
            .map(|d| d.iter().copied().max().unwrap_or_default())
            .collect();
        last.sort();
        println!();
        println!(
            "weights API: {} long-polling clients, {} changes, {} services × 3 destinations (tideway serve-weights, loopback)",
            self.clients, args.changes, args.services
        );
        println!();
        println!("| measure | value |");
        println!("|---|---|");
        println!(
            "| server RSS, no clients | {:.1} MiB |",
            self.baseline_rss_kib as f64 / 1024.0
        );
        println!(
            "| server RSS, {} polls held | {:.1} MiB ({:.1} KiB per poller) |",
            self.clients,
            self.held_rss_kib as f64 / 1024.0,
            (self.held_rss_kib.saturating_sub(self.baseline_rss_kib)) as f64 / self.clients as f64
        );
        println!(
            "| server peak RSS | {:.1} MiB |",
            self.peak_rss_kib as f64 / 1024.0
        );
        println!(
            "| server CPU, polls held, no change | {:.2} % of one core |",
            self.idle_cpu_percent
        );
        println!(
            "| server CPU per change (answer {} polls, take {} new ones) | {:.1} ms |",
            self.clients, self.clients, self.cpu_per_change_ms
        );
        println!(
            "| time to open {} polls | {:.2} s |",
            self.clients, self.connect_secs
        );
        println!(
            "| change → a poller has it, p50 | {} |",
            ms(percentile(&all, 0.50))
        );
        println!(
            "| change → a poller has it, p99 | {} |",
            ms(percentile(&all, 0.99))
        );
        println!(
            "| change → all {} pollers have it, p50 | {} |",
            self.clients,
            ms(percentile(&last, 0.50))
        );
        println!(
            "| change → all {} pollers have it, p99 | {} |",
            self.clients,
            ms(percentile(&last, 0.99))
        );
        println!(
            "| change → all pollers have it, max | {} |",
            ms(last.last().copied().unwrap_or_default())
        );
        println!("| pollers that missed a change | {} |", self.lost);
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: &str) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// GET /v1/weights with the ETag; (status, new ETag version).
async fn poll(sender: &mut Sender, addr: &str, etag: Option<u64>) -> anyhow::Result<(u16, u64)> {
    sender.ready().await?;
    let mut req = http::Request::get("/v1/weights?wait=60s").header("host", addr);
    if let Some(v) = etag {
        req = req.header("if-none-match", format!("\"{v}\""));
    }
    let resp = sender.send_request(req.body(Empty::new())?).await?;
    let status = resp.status().as_u16();
    let version = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_matches('"').parse::<u64>().ok())
        .context("an ETag")?;
    let body = resp.into_body().collect().await?.to_bytes();
    if status == 200 && body.is_empty() {
        bail!("a 200 without a document");
    }
    Ok((status, version))
}

async fn run(args: &Args, server: &Server) -> anyhow::Result<Report> {
    let addr = server.addr.clone();
    let (_, baseline_rss_kib, _) = server.usage()?;

    // The pollers: first a plain GET for the version, then long-polls.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let ready = Arc::new(AtomicUsize::new(0));
    let connect_started = Instant::now();
    let opening = Arc::new(tokio::sync::Semaphore::new(256));
    for _ in 0..args.clients {
        let addr = addr.clone();
        let seen = seen_tx.clone();
        let ready = ready.clone();
        let opening = opening.clone();
        tokio::spawn(async move {
            let permit = opening.acquire_owned().await;
            let result: anyhow::Result<()> = async {
                let mut sender = connect(&addr).await?;
                let (_, mut version) = poll(&mut sender, &addr, None).await?;
                drop(permit);
                ready.fetch_add(1, Ordering::Relaxed);
                loop {
                    let (status, v) = poll(&mut sender, &addr, Some(version)).await?;
                    if status == 200 && v != version {
                        let _ = seen.send((v, Instant::now()));
                        version = v;
                    }
                }
            }
            .await;
            if let Err(e) = result {
                eprintln!("poller: {e:#}");
            }
        });
    }
    drop(seen_tx);
    while ready.load(Ordering::Relaxed) < args.clients {
        if connect_started.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {} of {} pollers connected in 120 s",
                ready.load(Ordering::Relaxed),
                args.clients
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    // Let the last long-polls reach the server.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (cpu0, _, _) = server.usage()?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let (cpu1, held_rss_kib, _) = server.usage()?;
    let idle_cpu_percent = (cpu1 - cpu0) / t0.elapsed().as_secs_f64() * 100.0;

    // The changes, one at a time: each waits until every poller has it.
    let mut writer = connect_writer(&addr).await?;
    let mut per_change = Vec::new();
    let mut lost = 0;
    let (cpu_start, _, _) = server.usage()?;
    for i in 0..args.changes {
        let sent = Instant::now();
        let version = drain(&mut writer, &addr, i % 2 == 0).await?;
        let mut delays = Vec::with_capacity(args.clients);
        let deadline = tokio::time::sleep(Duration::from_secs(30));
        tokio::pin!(deadline);
        while delays.len() < args.clients {
            tokio::select! {
                got = seen_rx.recv() => match got {
                    Some((v, at)) if v == version => delays.push(at.saturating_duration_since(sent)),
                    Some(_) => {}
                    None => bail!("every poller stopped"),
                },
                () = &mut deadline => break,
            }
        }
        lost += args.clients - delays.len();
        per_change.push(delays);
        // Let the pollers' next polls reach the server before the next change.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (cpu_end, _, peak_rss_kib) = server.usage()?;
    // Less the idle CPU of the pauses between changes.
    let pauses = 0.3 * args.changes as f64;
    let idle_share = (cpu1 - cpu0) / t0.elapsed().as_secs_f64() * pauses;
    let cpu_per_change_ms =
        ((cpu_end - cpu_start - idle_share).max(0.0) / args.changes.max(1) as f64) * 1000.0;
    Ok(Report {
        clients: args.clients,
        baseline_rss_kib,
        connect_secs,
        idle_cpu_percent,
        held_rss_kib,
        peak_rss_kib,
        per_change,
        cpu_per_change_ms,
        lost,
    })
}

type Writer = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect_writer(addr: &str) -> anyhow::Result<Writer> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Drain (or undrain) cluster `east` for every service; the new version.
async fn drain(writer: &mut Writer, addr: &str, drained: bool) -> anyhow::Result<u64> {
    writer.ready().await?;
    let body = format!("{{\"cluster\":\"east\",\"drained\":{drained}}}");
    let req = http::Request::post("/v1/drain")
        .header("host", addr)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = writer.send_request(req).await?;
    let status = resp.status();
    let version = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_matches('"').parse::<u64>().ok());
    let body = resp.into_body().collect().await?.to_bytes();
    match (status.as_u16(), version) {
        (200, Some(v)) => Ok(v),
        _ => bail!(
            "drain answered {status}: {}",
            String::from_utf8_lossy(&body)
        ),
    }
}
