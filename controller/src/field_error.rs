//! The one error format of every user-facing check (`tideway render`,
//! `tideway check-config`, policy validation): the field path, the value
//! found there, and what was expected.
//!
//! Why one type: a user fixing a policy should read the same shape of message
//! whichever command found the problem, and tests can assert on the path
//! rather than on prose.

use std::fmt;

/// One problem at one place in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where, as written in the document: `spec.destinations[1].weight`.
    pub path: String,
    /// What was found there (rendered compactly; empty when absent).
    pub value: String,
    /// What was expected instead.
    pub expected: String,
}

impl FieldError {
    pub fn new(
        path: impl Into<String>,
        value: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            value: value.into(),
            expected: expected.into(),
        }
    }

    /// A value rendered as JSON (strings quoted, numbers bare).
    pub fn json(
        path: impl Into<String>,
        value: &impl serde::Serialize,
        expected: impl Into<String>,
    ) -> Self {
        let value = serde_json::to_string(value).unwrap_or_else(|_| "?".to_string());
        Self::new(path, value, expected)
    }

    /// A field that must be present and is not.
    pub fn missing(path: impl Into<String>, expected: impl Into<String>) -> Self {
        Self::new(path, "", expected)
    }

    /// The same error, its path under `prefix` (`spec` + `tracing.mode`).
    pub fn under(mut self, prefix: &str) -> Self {
        if prefix.is_empty() {
            return self;
        }
        self.path = if self.path.is_empty() {
            prefix.to_string()
        } else if self.path.starts_with('[') {
            format!("{prefix}{}", self.path)
        } else {
            format!("{prefix}.{}", self.path)
        };
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        };
        if self.expected.is_empty() {
            write!(f, "{path}: {}", self.value)
        } else if self.value.is_empty() {
            write!(f, "{path}: missing; expected {}", self.expected)
        } else {
            write!(f, "{path}: got {}; expected {}", self.value, self.expected)
        }
    }
}

impl std::error::Error for FieldError {}

/// Every problem found in one document (validation does not stop at the
/// first: a user fixes them all in one edit).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldErrors {
    /// The file or object the paths are relative to (`policy.yaml`).
    pub source: String,
    pub errors: Vec<FieldError>,
}

impl FieldErrors {
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            errors: Vec::new(),
        }
    }

    pub fn push(&mut self, error: FieldError) {
        self.errors.push(error);
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(())` when nothing was found.
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// Whether some error is at `path` (tests and callers that branch on it).
    pub fn has_path(&self, path: &str) -> bool {
        self.errors.iter().any(|e| e.path == path)
    }
}

impl From<FieldError> for FieldErrors {
    fn from(error: FieldError) -> Self {
        Self {
            source: String::new(),
            errors: vec![error],
        }
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        if self.source.is_empty() {
            write!(f, "{n} error(s)")?;
        } else {
            write!(f, "{}: {n} error(s)", self.source)?;
        }
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_path_value_and_expectation() {
        let e = FieldError::json("spec.destinations[1].weight", &-5.0, "a number ≥ 0");
        assert_eq!(
            e.to_string(),
            "spec.destinations[1].weight: got -5.0; expected a number ≥ 0"
        );
        let e = FieldError::missing("spec.service.port", "a port number 1..=65535");
        assert_eq!(
            e.to_string(),
            "spec.service.port: missing; expected a port number 1..=65535"
        );
    }

    #[test]
    fn under_prefixes_fields_and_indices() {
        assert_eq!(
            FieldError::new("tracing.mode", "1", "x").under("spec").path,
            "spec.tracing.mode"
        );
        assert_eq!(
            FieldError::new("[2].name", "1", "x")
                .under("spec.items")
                .path,
            "spec.items[2].name"
        );
        assert_eq!(FieldError::new("", "1", "x").under("spec").path, "spec");
    }
}
