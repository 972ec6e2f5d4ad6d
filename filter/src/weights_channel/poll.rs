//! The poll state machine: when the lease holder asks the weights API, what
//! it asks (`If-None-Match` with the version it has, `wait=` for a
//! long-poll), and what an answer means.
//!
//! One poll at a time. After an answer (`200` or `304`) the next poll goes
//! out at once as a long-poll: the server holds it until the version
//! changes, so a change reaches the proxy as soon as it is made, and an
//! idle channel costs one request per `waitMs`. The first poll after taking
//! the lease, and the first after a failure, do not wait: the holder learns
//! at once whether the server is there and what it has. A failed poll
//! (no answer, reset, timeout, any status but 200/304) waits `retryMs`
//! before the next. The call's own timeout (the wait plus a margin) bounds
//! a poll the server never answers; a poll whose answer never comes at all
//! (a host that lost it) is given up after the same time.

use crate::config::WeightsSourceConfig;

/// What the server gets beyond `wait` to answer a long-poll.
pub const ANSWER_MARGIN_MS: u64 = 5_000;

/// A poll to send: `:path` and the extra headers (the host adds
/// `:method GET` and `:authority`), and the call's timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRequest {
    pub path: String,
    /// `"<version>"` of the document held, if any.
    pub if_none_match: Option<String>,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next poll may go out at `next_at_ns`.
    Idle { next_at_ns: u64 },
    /// A poll is out; given up at `deadline_ns`.
    InFlight { token: u32, deadline_ns: u64 },
}

/// How an answer was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `200`: a document to validate.
    Document,
    /// `304`: the version held is current.
    NotModified,
    /// `401`/`403`.
    Denied(u16),
    /// Anything else: the server is not usable now (`None`: no status — a
    /// reset, or the cluster is gone).
    Failed(Option<u16>),
}

/// The poll side of one worker.
#[derive(Debug, Clone)]
pub struct Poller {
    state: State,
    /// The last poll was answered: the next one long-polls.
    answered_last: bool,
}

impl Default for Poller {
    fn default() -> Self {
        Self::new()
    }
}

impl Poller {
    pub fn new() -> Self {
        Self {
            state: State::Idle { next_at_ns: 0 },
            answered_last: false,
        }
    }

    /// The lease was just taken: poll at once, without waiting.
    pub fn restart(&mut self, now_ns: u64) {
        self.state = State::Idle { next_at_ns: now_ns };
        self.answered_last = false;
    }

    pub fn in_flight(&self) -> Option<u32> {
        match self.state {
            State::InFlight { token, .. } => Some(token),
            State::Idle { .. } => None,
        }
    }

    /// The poll to send now, if one is due. A poll whose answer is overdue
    /// is given up first (and counts as a failure: `Some(true)` in the
    /// second place).
    pub fn due(
        &mut self,
        source: &WeightsSourceConfig,
        services: &[&str],
        version: Option<u64>,
        now_ns: u64,
    ) -> (Option<PollRequest>, bool) {
        let mut overdue = false;
        if let State::InFlight { deadline_ns, .. } = self.state {
            if now_ns < deadline_ns {
                return (None, false);
            }
            overdue = true;
            self.failed(source, now_ns);
        }
        match self.state {
            State::Idle { next_at_ns } if now_ns >= next_at_ns => {
                (Some(self.request(source, services, version)), overdue)
            }
            _ => (None, overdue),
        }
    }

    fn request(
        &self,
        source: &WeightsSourceConfig,
        services: &[&str],
        version: Option<u64>,
    ) -> PollRequest {
        let mut path = source.path.clone();
        path.push_str("?service=");
        for (i, s) in services.iter().enumerate() {
            if i > 0 {
                path.push(',');
            }
            query_escape(s, &mut path);
        }
        // Only a poll with a version to compare can be held: without one
        // the server answers at once.
        let wait = self.answered_last && version.is_some();
        if wait {
            path.push_str("&wait=");
            path.push_str(&(source.wait_ms / 1_000).to_string());
            path.push('s');
        }
        PollRequest {
            path,
            if_none_match: version.map(|v| format!("\"{v}\"")),
            timeout_ms: if wait { source.wait_ms } else { 0 } + ANSWER_MARGIN_MS,
        }
    }

    /// The poll went out with `token`.
    pub fn sent(&mut self, token: u32, request: &PollRequest, now_ns: u64) {
        self.state = State::InFlight {
            token,
            deadline_ns: now_ns.saturating_add(request.timeout_ms.saturating_mul(1_000_000)),
        };
    }

    /// The poll could not be sent, or failed: retry after `retryMs`.
    pub fn failed(&mut self, source: &WeightsSourceConfig, now_ns: u64) {
        self.answered_last = false;
        self.state = State::Idle {
            next_at_ns: now_ns.saturating_add(source.retry_ms.saturating_mul(1_000_000)),
        };
    }

    /// An answer to call `token`: `None` if it is not this poller's. The
    /// caller then reports [`Poller::succeeded`] or [`Poller::failed`] (a
    /// `200` whose document is rejected is a failure: the server is not
    /// giving usable answers, so the next poll waits `retryMs`).
    pub fn answered(&mut self, token: u32, status: Option<u16>) -> Option<Answer> {
        if self.in_flight() != Some(token) {
            return None;
        }
        Some(match status {
            Some(200) => Answer::Document,
            Some(304) => Answer::NotModified,
            Some(s @ (401 | 403)) => Answer::Denied(s),
            other => Answer::Failed(other),
        })
    }

    /// The answer was usable: the next poll goes out at once, long-polling.
    pub fn succeeded(&mut self, now_ns: u64) {
        self.answered_last = true;
        self.state = State::Idle { next_at_ns: now_ns };
    }
}

/// Percent-encode `s` into `out` for a query value (RFC 3986 unreserved
/// bytes stay as they are; `,` separates names, so it is encoded too).
fn query_escape(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> WeightsSourceConfig {
        let config = crate::config::PluginConfig::from_json(
            br#"{"weightsSource":{"cluster":"c","authority":"a","waitMs":30000,"retryMs":1000}}"#,
        )
        .expect("valid");
        config.weights_source.expect("present")
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn first_poll_asks_at_once_then_long_polls_with_the_version() {
        let s = source();
        let mut p = Poller::new();
        let (req, _) = p.due(&s, &["reviews", "a b,c"], None, 0);
        let req = req.expect("due at once");
        assert_eq!(req.path, "/v1/weights?service=reviews,a%20b%2Cc");
        assert_eq!(req.if_none_match, None);
        assert_eq!(req.timeout_ms, ANSWER_MARGIN_MS);
        p.sent(7, &req, 0);
        assert_eq!(p.due(&s, &["reviews"], None, MS).0, None, "one at a time");
        assert_eq!(p.answered(8, Some(200)), None, "not our token");
        assert_eq!(p.answered(7, Some(200)), Some(Answer::Document));
        p.succeeded(2 * MS);
        let req = p.due(&s, &["reviews"], Some(5), 2 * MS).0.expect("at once");
        assert_eq!(req.path, "/v1/weights?service=reviews&wait=30s");
        assert_eq!(req.if_none_match.as_deref(), Some("\"5\""));
        assert_eq!(req.timeout_ms, 30_000 + ANSWER_MARGIN_MS);
    }

    #[test]
    fn failures_wait_retry_ms_and_the_next_poll_does_not_wait() {
        let s = source();
        let mut p = Poller::new();
        p.succeeded(0);
        let req = p.due(&s, &["r"], Some(1), 0).0.unwrap();
        p.sent(1, &req, 0);
        assert_eq!(p.answered(1, Some(503)), Some(Answer::Failed(Some(503))));
        p.failed(&s, 10 * MS);
        assert_eq!(p.due(&s, &["r"], Some(1), 1_009 * MS).0, None);
        let req = p
            .due(&s, &["r"], Some(1), 1_010 * MS)
            .0
            .expect("after retryMs");
        assert!(!req.path.contains("wait="), "{}", req.path);
        p.sent(2, &req, 1_010 * MS);
        assert_eq!(p.answered(2, Some(403)), Some(Answer::Denied(403)));
        assert_eq!(p.answered(2, None), Some(Answer::Failed(None)));
    }

    #[test]
    fn an_answer_that_never_comes_is_given_up_after_the_timeout() {
        let s = source();
        let mut p = Poller::new();
        let req = p.due(&s, &["r"], None, 0).0.unwrap();
        p.sent(1, &req, 0);
        let deadline = req.timeout_ms * MS;
        assert_eq!(p.due(&s, &["r"], None, deadline - 1), (None, false));
        assert_eq!(p.due(&s, &["r"], None, deadline), (None, true));
        assert_eq!(p.in_flight(), None);
        assert_eq!(p.answered(1, Some(200)), None, "a late answer is ignored");
        assert!(p.due(&s, &["r"], None, deadline + 1_000 * MS).0.is_some());
    }
}
