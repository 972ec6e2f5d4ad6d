//! Bounded retries with exponential backoff, for transient registry failures
//! (connection refused/reset, timeouts, HTTP 5xx and 429).
//!
//! Bounded so that "registry down" ends in a clear error after a predictable
//! time instead of hanging a CI job; exponential so a registry that is
//! restarting gets a moment to come back.

use std::future::Future;
use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each later one.
    pub initial_backoff: Duration,
    /// Upper bound of a single wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, waiting 0.5 s, 1 s, 2 s in between (3.5 s in total).
    fn default() -> Self {
        Self {
            attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// No retries: one attempt.
    pub fn none() -> Self {
        Self {
            attempts: 1,
            ..Self::default()
        }
    }

    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// The last error of an operation, and how many attempts were made.
#[derive(Debug)]
pub struct Exhausted<E> {
    /// The final error.
    pub error: E,
    /// Attempts made.
    pub attempts: u32,
}

/// Runs `op` until it succeeds, fails with a non-transient error, or the
/// policy's attempts are used up. `what` names the operation in log lines.
pub async fn retry<T, E, F, Fut>(
    policy: RetryPolicy,
    what: &str,
    is_transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, Exhausted<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let attempts = policy.attempts.max(1);
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(error) if attempt < attempts && is_transient(&error) => {
                let wait = policy.backoff(attempt);
                tracing::warn!(
                    operation = what,
                    attempt,
                    of = attempts,
                    wait_ms = wait.as_millis() as u64,
                    %error,
                    "transient registry failure; retrying"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(error) => {
                return Err(Exhausted {
                    error,
                    attempts: attempt,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn fast(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(500));
        assert_eq!(p.backoff(2), Duration::from_secs(1));
        assert_eq!(p.backoff(3), Duration::from_secs(2));
        assert_eq!(p.backoff(10), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn transient_errors_are_retried_up_to_the_bound() {
        let calls = Cell::new(0);
        let r: Result<(), _> = retry(
            fast(3),
            "t",
            |_: &String| true,
            || {
                calls.set(calls.get() + 1);
                async { Err("down".to_string()) }
            },
        )
        .await;
        let e = r.unwrap_err();
        assert_eq!((calls.get(), e.attempts), (3, 3));
    }

    #[tokio::test]
    async fn permanent_errors_stop_at_once_and_success_stops_retrying() {
        let calls = Cell::new(0);
        let r: Result<(), _> = retry(
            fast(5),
            "t",
            |_: &String| false,
            || {
                calls.set(calls.get() + 1);
                async { Err("401".to_string()) }
            },
        )
        .await;
        assert_eq!((calls.get(), r.unwrap_err().attempts), (1, 1));
        let calls = Cell::new(0);
        let r = retry(
            fast(5),
            "t",
            |_: &String| true,
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n < 2 {
                        Err("x".to_string())
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(r.unwrap(), 2);
    }
}
