//! A configuration error: the field path and why. Every part of the
//! configuration reports in it — the plugin config, its tracing section,
//! the weights document, a what-if scenario — so that each names the
//! field the same way; a module of its own so that those parts need not
//! depend on each other to share it.

use std::fmt;

/// A configuration error: the field path (as written in the JSON) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid plugin configuration: {}: {}",
            self.field, self.message
        )
    }
}

impl std::error::Error for ConfigError {}
