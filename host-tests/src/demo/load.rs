//! The demo's load generator: paced HTTP/1.1 clients through Envoy, some
//! anonymous, some session-affine users (`x-user-id`), every response
//! recorded with the cluster that served it.
//!
//! Paced, not closed-loop: each worker sends on a fixed schedule (a random
//! phase offset apart), so the offered load is the same whatever policy is
//! under test; a worker that falls behind (a response slower than its
//! interval) sends at once and does not burst to catch up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A request with no `x-user-id`.
pub const ANONYMOUS: u16 = u16::MAX;
/// No cluster could be named for the response (e.g. no upstream at all).
pub const NO_CLUSTER: u8 = u8::MAX;

/// One request's outcome.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Sent at, ms since the run's start.
    pub at_ms: u32,
    pub latency_us: u32,
    /// HTTP status; 0 = no response (transport error).
    pub status: u16,
    /// Index of the cluster whose pod served it (or was tried), or
    /// [`NO_CLUSTER`].
    pub cluster: u8,
    /// User number, or [`ANONYMOUS`].
    pub user: u16,
}

impl Sample {
    pub fn ok(&self) -> bool {
        self.status == 200
    }
}

/// How much load, of which kind.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Requests per second without a session key, over `anonymous_workers`.
    pub anonymous_rps: f64,
    pub anonymous_workers: usize,
    /// Users with a session (`x-user-id: user-N`), one worker each.
    pub users: usize,
    /// Requests per second of each user.
    pub user_rps: f64,
}

/// Running load; [`Load::stop`] returns what it recorded.
pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    workers: Vec<JoinHandle<()>>,
}

/// Where the load goes and how responses are attributed.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://127.0.0.1:PORT/`.
    pub url: String,
    /// The `Host` the callers use.
    pub host: String,
    /// Upstream `127.0.0.1:PORT` of each cluster, by cluster index.
    pub cluster_addresses: Vec<String>,
}

impl Load {
    pub fn start(spec: &LoadSpec, target: &Target, start: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut worker = |user: u16, rps: f64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let interval = Duration::from_secs_f64(1.0 / rps.max(0.1));
            let offset = interval.mul_f64((seed >> 11) as f64 / (1u64 << 53) as f64);
            let (stop, samples, target) = (Arc::clone(&stop), Arc::clone(&samples), target.clone());
            std::thread::spawn(move || {
                run_worker(user, interval, offset, start, &target, &stop, &samples)
            })
        };
        let per_anonymous = spec.anonymous_rps / spec.anonymous_workers.max(1) as f64;
        for _ in 0..spec.anonymous_workers {
            workers.push(worker(ANONYMOUS, per_anonymous));
        }
        for user in 0..spec.users.min(usize::from(ANONYMOUS - 1)) {
            workers.push(worker(user as u16, spec.user_rps));
        }
        Self {
            stop,
            samples,
            workers,
        }
    }

    /// Stops every worker (each finishes its request in flight).
    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            let _ = w.join();
        }
        let mut samples = self
            .samples
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        samples.sort_by_key(|s| s.at_ms);
        samples
    }
}

fn run_worker(
    user: u16,
    interval: Duration,
    offset: Duration,
    start: Instant,
    target: &Target,
    stop: &AtomicBool,
    samples: &Mutex<Vec<Sample>>,
) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .max_idle_connections_per_host(1)
        .build();
    let user_id = (user != ANONYMOUS).then(|| format!("user-{user}"));
    let mut next = Instant::now() + offset;
    let mut local = Vec::with_capacity(1024);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next = next.max(Instant::now() - interval) + interval;
        let sent = Instant::now();
        let mut request = agent.get(&target.url).set("host", &target.host);
        if let Some(id) = &user_id {
            request = request.set("x-user-id", id);
        }
        let (status, upstream) = match request.call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => {
                let upstream = r.header("x-upstream-host").map(str::to_string);
                let status = r.status();
                // Read the body so the connection is reused.
                let _ = r.into_string();
                (status, upstream)
            }
            Err(_) => (0, None),
        };
        let cluster = upstream
            .and_then(|u| target.cluster_addresses.iter().position(|a| *a == u))
            .and_then(|i| u8::try_from(i).ok())
            .unwrap_or(NO_CLUSTER);
        local.push(Sample {
            at_ms: u32::try_from(sent.duration_since(start).as_millis()).unwrap_or(u32::MAX),
            latency_us: u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX),
            status,
            cluster,
            user,
        });
    }
    if let Ok(mut all) = samples.lock() {
        all.extend(local);
    }
}
