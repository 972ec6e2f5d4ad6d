//! What counts as a destination's failure.
//!
//! What Envoy's outlier detection counts: a 5xx answer, or no answer
//! because of the upstream — its connection failed, it reset the stream, or
//! it did not answer in time. A 4xx is the client's doing, and a client
//! that goes away (a caller's timeout, a browser navigating away, a load
//! generator stopping) is not the destination's failure at all: its request
//! ends its in-flight accounting and records nothing else. Otherwise every
//! healthy destination would be ejected whenever callers hang up.
//!
//! A gRPC call answers HTTP 200 whatever happened; its outcome is the
//! `grpc-status` of the response headers (a trailers-only response) or of
//! the trailers, and the failures are the configured codes
//! (`scheduler.grpcFailureCodes`, by default those Envoy's outlier
//! detection counts).

/// What a request showed about its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived with this `:status`.
    Status(u32),
    /// A gRPC call ended with this `grpc-status`.
    Grpc(u32),
    /// No response: the upstream connection failed, was reset, or timed out
    /// (Envoy's verdict, [`upstream_failure`]).
    UpstreamFailure,
}

impl Outcome {
    /// Whether the destination served the request; `grpc_failures` is the
    /// set of failing gRPC codes ([`grpc_failure_set`]).
    pub fn is_success(self, grpc_failures: u32) -> bool {
        match self {
            Outcome::Status(s) => !(500..=599).contains(&s),
            Outcome::Grpc(code) => code > 31 || grpc_failures & (1 << code) == 0,
            Outcome::UpstreamFailure => false,
        }
    }
}

/// The configured failing gRPC codes as a bit set (bit `c` for code `c`).
pub fn grpc_failure_set(codes: &[u32]) -> u32 {
    codes
        .iter()
        .filter(|&&c| c < 32)
        .fold(0, |set, &c| set | (1 << c))
}

/// Whether a request is a gRPC call, as Envoy decides it
/// (`Grpc::Common::hasGrpcContentType`): `content-type` is exactly
/// `application/grpc` or starts with `application/grpc+` (`+proto`,
/// `+json`, …). `application/grpc-web` is not gRPC to Envoy (its grpc_web
/// filter translates it first, and a grpc-web response carries its status
/// in the body), and Envoy compares case-sensitively, so this does too.
pub fn is_grpc(content_type: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    match content_type.strip_prefix(GRPC) {
        Some(rest) => rest.is_empty() || rest[0] == b'+',
        None => false,
    }
}

/// Envoy's response flags (the `response.flags` property, the legacy bit
/// set of `StreamInfo::ResponseFlag`) that put a stream's end on the
/// upstream: UT (request timeout), UR (remote reset), UF (connection
/// failure), UC (connection termination), URX (retry or connect limit),
/// UMSDR (max stream duration), UPE (protocol error).
const UPSTREAM_FAILURE_FLAGS: u64 = UT | UR | UF | UC | URX | UMSDR | UPE;
const UT: u64 = 1 << 2;
const UR: u64 = 1 << 4;
const UF: u64 = 1 << 5;
const UC: u64 = 1 << 6;
const URX: u64 = 1 << 15;
const UMSDR: u64 = 1 << 19;
const UPE: u64 = 1 << 23;

/// The outcome of a stream that ended without response headers, from
/// Envoy's `response.flags`: a failure when the upstream is to blame;
/// `None` (nothing recorded) when the downstream went away (DC, DR), Envoy
/// reset it locally, or nothing says the upstream failed.
pub fn upstream_failure(flags: u64) -> Option<Outcome> {
    (flags & UPSTREAM_FAILURE_FLAGS != 0).then_some(Outcome::UpstreamFailure)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DC (downstream connection termination) and DR (downstream remote reset).
    const DC: u64 = 1 << 14;
    const DR: u64 = 1 << 28;

    #[test]
    fn upstream_failures_and_5xx_count_4xx_do_not() {
        assert!(!Outcome::UpstreamFailure.is_success(0));
        assert!(!Outcome::Status(502).is_success(0));
        assert!(Outcome::Status(404).is_success(0));
        assert!(Outcome::Status(200).is_success(0));
    }

    #[test]
    fn grpc_failures_are_the_configured_codes() {
        let set = grpc_failure_set(&crate::config::DEFAULT_GRPC_FAILURE_CODES);
        for code in [2, 4, 12, 13, 14, 15] {
            assert!(!Outcome::Grpc(code).is_success(set), "{code}");
        }
        // OK, and the caller's own mistakes (NOT_FOUND, INVALID_ARGUMENT…).
        for code in [0, 1, 3, 5, 7, 16, 99] {
            assert!(Outcome::Grpc(code).is_success(set), "{code}");
        }
        assert!(Outcome::Grpc(14).is_success(grpc_failure_set(&[4])));
    }

    #[test]
    fn grpc_is_told_by_content_type() {
        assert!(is_grpc(b"application/grpc"));
        assert!(is_grpc(b"application/grpc+proto"));
        assert!(is_grpc(b"application/grpc+json"));
        assert!(is_grpc(b"application/grpc+"));
        assert!(!is_grpc(b"application/json"));
        assert!(!is_grpc(b"application/grp"));
        assert!(!is_grpc(b""));
    }

    /// Envoy's rule: grpc-web (whose status travels in the body) and
    /// anything else that merely starts with `application/grpc` is not a
    /// gRPC call, nor is a differently cased or parameterised type.
    #[test]
    fn grpc_web_and_lookalikes_are_not_grpc() {
        for not_grpc in [
            &b"application/grpc-web"[..],
            b"application/grpc-web+proto",
            b"application/grpc-web-text",
            b"application/grpcx",
            b"application/grpc; charset=utf-8",
            b"Application/GRPC",
        ] {
            assert!(!is_grpc(not_grpc), "{}", String::from_utf8_lossy(not_grpc));
        }
    }

    #[test]
    fn a_client_that_went_away_is_not_a_failed_destination() {
        assert_eq!(upstream_failure(DC), None);
        assert_eq!(upstream_failure(DR), None);
        assert_eq!(upstream_failure(0), None);
        for flag in [UT, UR, UF, UC, URX, UMSDR, UPE] {
            assert_eq!(upstream_failure(flag), Some(Outcome::UpstreamFailure));
            // Both ends gone: the upstream's failure still counts.
            assert_eq!(upstream_failure(flag | DC), Some(Outcome::UpstreamFailure));
        }
    }
}
