//! What counts as a destination's failure.
//!
//! As Envoy's outlier detection counts them: a 5xx answer, or no answer at
//! all. A 4xx is the client's doing and says nothing about the destination.

/// What ended a request, for health accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived with this `:status`.
    Status(u32),
    /// The stream ended without response headers (reset, timeout).
    Reset,
}

impl Outcome {
    /// Whether the destination served the request.
    pub fn is_success(self) -> bool {
        match self {
            Outcome::Status(s) => !(500..=599).contains(&s),
            Outcome::Reset => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_and_5xx_count_as_failures_4xx_do_not() {
        assert!(!Outcome::Reset.is_success());
        assert!(!Outcome::Status(502).is_success());
        assert!(Outcome::Status(404).is_success());
        assert!(Outcome::Status(200).is_success());
    }
}
