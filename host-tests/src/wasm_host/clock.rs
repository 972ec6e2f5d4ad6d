//! The controllable clock.
//!
//! One clock per [`Host`](super::Host): `proxy_get_current_time_nanoseconds`,
//! WASI `clock_time_get` (realtime and monotonic, as Envoy's
//! `wasi_unstable_clock_time_get` serves both from its time source), tick
//! scheduling and HTTP-call timeouts all read it. It only moves when a test
//! moves it, so time-dependent behaviour (ejection, backoff, EWMA decay) is
//! reproducible to the nanosecond.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// 2024-01-01T00:00:00Z: a fixed, plausible wall-clock start.
pub const DEFAULT_START_UNIX_NANOS: u64 = 1_704_067_200_000_000_000;

/// A shared, manually advanced clock. Cloning shares the same time.
#[derive(Debug, Clone)]
pub struct FakeClock {
    wall_nanos: Arc<AtomicU64>,
    start_nanos: u64,
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::starting_at(DEFAULT_START_UNIX_NANOS)
    }
}

impl FakeClock {
    pub fn starting_at(unix_nanos: u64) -> Self {
        Self {
            wall_nanos: Arc::new(AtomicU64::new(unix_nanos)),
            start_nanos: unix_nanos,
        }
    }

    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub fn now_nanos(&self) -> u64 {
        self.wall_nanos.load(Ordering::SeqCst)
    }

    /// Time elapsed since the clock was created.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.now_nanos().saturating_sub(self.start_nanos))
    }

    /// Monotonic time: nanoseconds since the clock was created.
    pub fn monotonic_nanos(&self) -> u64 {
        self.now_nanos().saturating_sub(self.start_nanos)
    }

    /// Moves time forward. Prefer [`Host::advance`](super::Host::advance),
    /// which also fires the ticks and timeouts that fall due.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.wall_nanos.fetch_add(nanos, Ordering::SeqCst);
    }

    /// Sets the wall clock to an absolute time (it may go backwards: Envoy's
    /// wall clock can too).
    pub fn set_nanos(&self, unix_nanos: u64) {
        self.wall_nanos.store(unix_nanos, Ordering::SeqCst);
    }
}

impl wasmtime_wasi::HostWallClock for FakeClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.now_nanos())
    }
}

impl wasmtime_wasi::HostMonotonicClock for FakeClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.monotonic_nanos()
    }
}
