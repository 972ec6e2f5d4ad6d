//! `tideway-weights-propagation`: the time from a weight change at the
//! weights API to every worker of several real Envoys serving it — the
//! whole channel: `tideway serve-weights`, the long-poll of the lease holder
//! (`dispatch_http_call`), the shared-data write, and each worker adopting
//! the version on its next tick.
//!
//! A benchmark, not a test: it prints a table. Each Envoy runs the built
//! filter with `--workers` worker threads and a `weightsSource` pointing at
//! the server; each change is a `POST /v1/drain` toggling one cluster. A
//! worker's adoption is read from the filter's own log line (`tideway:
//! weights version V adopted`, one per worker, with Envoy's millisecond
//! timestamp and thread id), so the figure is measured inside Envoy, not by
//! sampling requests.

use anyhow::{bail, Context};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tideway_host_tests::backend::Backend;
use tideway_host_tests::envoy::{Envoy, EnvoySpec};

const TOKEN: &str = "propagation-bench-token";
const TICK_MS: u64 = 200;

struct Args {
    envoys: usize,
    workers: u32,
    changes: usize,
    tideway: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        envoys: 4,
        workers: 2,
        changes: 10,
        tideway: tideway_host_tests::env::workspace_root().join("target/release/tideway"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--envoys" => a.envoys = value()?.parse()?,
            "--workers" => a.workers = value()?.parse()?,
            "--changes" => a.changes = value()?.parse()?,
            "--tideway" => a.tideway = value()?.into(),
            "--help" | "-h" => {
                println!("tideway-weights-propagation [--envoys 4] [--workers 2] [--changes 10] [--tideway target/release/tideway]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if !a.tideway.exists() {
        bail!(
            "{} not found: cargo build --release -p tideway-controller --bin tideway (or --tideway PATH)",
            a.tideway.display()
        );
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    // Envoy stamps its log in local time; the adoption times are read from it.
    std::env::set_var("TZ", "UTC");
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("policy.yaml"),
        "apiVersion: traffic.tideway.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: reviews\n  namespace: prod\nspec:\n  fleet: bench\n  service:\n    name: reviews\n    port: 9080\n  destinations:\n  - cluster: east\n  - cluster: west\n",
    )?;
    std::fs::write(dir.path().join("token"), TOKEN)?;
    let mut server = Command::new(&args.tideway)
        .args(["serve-weights", "--listen", "127.0.0.1:0", "--policy"])
        .arg(dir.path().join("policy.yaml"))
        .arg("--token-file")
        .arg(dir.path().join("token"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting tideway serve-weights")?;
    let result = run(&args, &mut server);
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn run(args: &Args, server: &mut Child) -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .with_context(|| format!("serve-weights said {line:?}"))?
        .to_string();
    let port: u16 = addr.rsplit_once(':').context("port")?.1.parse()?;

    let backends = [
        Backend::start("east", false)?,
        Backend::start("west", false)?,
    ];
    let dests: Vec<(&str, u16)> = backends.iter().map(|b| (b.name(), b.port)).collect();
    let config = json!({
        "scheduler": {"tickMs": TICK_MS},
        "services": [{
            "name": "reviews",
            "hosts": ["reviews.prod.svc.cluster.local"],
            "destinations": [{"name": "east", "weight": 1}, {"name": "west", "weight": 1}]
        }],
        "weightsSource": {"cluster": "weights", "authority": "weights", "waitMs": 30000}
    })
    .to_string();
    let mut spec = EnvoySpec::new(&config, &dests);
    spec.concurrency = args.workers;
    spec.extra_clusters = vec![("weights".to_string(), port)];
    let envoys: Vec<Envoy> = (0..args.envoys)
        .map(|_| Envoy::start(&spec))
        .collect::<anyhow::Result<_>>()?;

    let version0 = current_version(&addr)?;
    wait_adopted(
        &envoys,
        version0,
        args.workers as usize,
        Duration::from_secs(30),
    )
    .context("the initial weights never reached every worker")?;

    let mut per_worker = Vec::new();
    let mut all_workers = Vec::new();
    for i in 0..args.changes {
        let sent = now_ms();
        let version = drain(&addr, i.is_multiple_of(2))?;
        let stamps = wait_adopted(
            &envoys,
            version,
            args.workers as usize,
            Duration::from_secs(10),
        )
        .with_context(|| format!("change {i} (version {version})"))?;
        let delays: Vec<f64> = stamps.iter().map(|t| (*t as f64 - sent).max(0.0)).collect();
        all_workers.push(delays.iter().copied().fold(0.0, f64::max));
        per_worker.extend(delays);
        std::thread::sleep(Duration::from_millis(300));
    }
    per_worker.sort_by(f64::total_cmp);
    all_workers.sort_by(f64::total_cmp);
    let p = |v: &[f64], q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!();
    println!(
        "weights propagation: {} Envoys × {} workers, {} changes, scheduler tick {} ms (tideway serve-weights → lease holder's long-poll → shared data → every worker)",
        args.envoys, args.workers, args.changes, TICK_MS
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| change → a worker serves it, p50 | {:.0} ms |",
        p(&per_worker, 0.5)
    );
    println!(
        "| change → a worker serves it, p99 | {:.0} ms |",
        p(&per_worker, 0.99)
    );
    println!(
        "| change → all {} workers serve it, p50 | {:.0} ms |",
        envoys.len() * args.workers as usize,
        p(&all_workers, 0.5)
    );
    println!(
        "| change → all {} workers serve it, p99 | {:.0} ms |",
        envoys.len() * args.workers as usize,
        p(&all_workers, 0.99)
    );
    println!(
        "| change → all workers serve it, max | {:.0} ms |",
        all_workers.last().copied().unwrap_or(0.0)
    );
    Ok(())
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// One HTTP/1.1 request on its own connection; (status, ETag version, body).
fn request(addr: &str, head: &str, body: &str) -> anyhow::Result<(u16, Option<u64>, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{head}\r\nhost: weights\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("a status line")?;
    let version = reply.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("etag")
            .then(|| v.trim().trim_matches('"').parse().ok())
            .flatten()
    });
    Ok((status, version, reply))
}

fn current_version(addr: &str) -> anyhow::Result<u64> {
    match request(addr, "GET /v1/weights HTTP/1.1", "")? {
        (200, Some(v), _) => Ok(v),
        (s, _, r) => bail!("GET /v1/weights answered {s}: {r}"),
    }
}

fn drain(addr: &str, drained: bool) -> anyhow::Result<u64> {
    let body = format!("{{\"cluster\":\"east\",\"drained\":{drained}}}");
    let head = format!("POST /v1/drain HTTP/1.1\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json");
    match request(addr, &head, &body)? {
        (200, Some(v), _) => Ok(v),
        (s, _, r) => bail!("POST /v1/drain answered {s}: {r}"),
    }
}

/// Wait until every Envoy logged `workers` adoptions of `version`; the
/// adoption times (ms since the epoch, from Envoy's log timestamps).
fn wait_adopted(
    envoys: &[Envoy],
    version: u64,
    workers: usize,
    within: Duration,
) -> anyhow::Result<Vec<u64>> {
    let needle = format!("tideway: weights version {version} adopted");
    let started = Instant::now();
    loop {
        let mut stamps = Vec::new();
        let mut complete = true;
        for e in envoys {
            // One line per worker thread (a worker adopts a version once).
            let mut by_thread = BTreeMap::new();
            for l in e.log().lines().filter(|l| l.contains(&needle)) {
                if let Some((ts, thread)) = stamp(l) {
                    by_thread.entry(thread).or_insert(ts);
                }
            }
            complete &= by_thread.len() >= workers;
            stamps.extend(by_thread.into_values());
        }
        if complete {
            return Ok(stamps);
        }
        if started.elapsed() > within {
            bail!(
                "after {within:?}: {} adoptions of version {version} logged, {} expected",
                stamps.len(),
                envoys.len() * workers
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `[2026-12-01 10:16:19.123][4242][info]…` → (ms since the epoch in UTC, thread id).
fn stamp(line: &str) -> Option<(u64, String)> {
    let rest = line.strip_prefix('[')?;
    let (ts, rest) = rest.split_once(']')?;
    let thread = rest.strip_prefix('[')?.split_once(']')?.0.to_string();
    let (date, time) = ts.split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, millis) = time.split_once('.')?;
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, mi, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let ms: i64 = millis.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = ((days * 24 + h) * 60 + mi) * 60 + s;
    u64::try_from(total * 1000 + ms).ok().map(|v| (v, thread))
}
