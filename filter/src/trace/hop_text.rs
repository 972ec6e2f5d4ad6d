//! The text span mode writes for one hop, encoded once per configuration
//! and identity: our `tracestate` member value and the span's attributes.
//!
//! Why: a hop's names (the filter's own cluster, the chosen destination's
//! cluster, the service) are the same for every request that takes it.
//! Escaping them per request, for the member value's grammar and for JSON,
//! was a third of span mode's own work; the engine keeps one [`HopText`]
//! per service and destination instead and copies it.

use super::member::write_member_value;
use super::otlp::push_hop_attributes;

/// A hop's encoded text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HopText {
    member_value: String,
    span_attributes: Vec<u8>,
}

impl HopText {
    /// The text for a hop from `source_cluster` to `target_cluster` (empty:
    /// no destination was chosen) for `service_name`.
    pub fn new(source_cluster: &str, target_cluster: &str, service_name: &str) -> Self {
        let mut member_value = String::new();
        write_member_value(&mut member_value, source_cluster, target_cluster);
        let mut span_attributes = Vec::new();
        push_hop_attributes(
            &mut span_attributes,
            source_cluster,
            target_cluster,
            service_name,
        );
        HopText {
            member_value,
            span_attributes,
        }
    }

    /// Our `tracestate` member's value ([`write_member_value`]).
    pub fn member_value(&self) -> &str {
        &self.member_value
    }

    /// The span's hop attributes, JSON array elements
    /// ([`push_hop_attributes`]).
    pub fn span_attributes(&self) -> &[u8] {
        &self.span_attributes
    }
}

/// The [`HopText`] of every hop of a configuration, by service, then by
/// destination with the mesh default (no destination) last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HopTexts(pub Vec<Vec<HopText>>);

impl HopTexts {
    /// The text of the hop to `destination` of `service` (`None`: the mesh
    /// default).
    pub fn get(&self, service: usize, destination: Option<usize>) -> Option<&HopText> {
        let texts = self.0.get(service)?;
        texts.get(destination.unwrap_or(texts.len().saturating_sub(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::member::parse_member_value;

    #[test]
    fn the_kept_text_is_what_each_encoder_writes() {
        let t = HopText::new("east \"1\"", "outbound|8080||a;b", "reviews");
        assert_eq!(
            parse_member_value(t.member_value()),
            Some(("east \"1\"".into(), "outbound|8080||a;b".into()))
        );
        let attrs: serde_json::Value =
            serde_json::from_slice(&[b"[".as_slice(), t.span_attributes(), b"]"].concat())
                .expect("JSON");
        assert_eq!(attrs[0]["value"]["stringValue"], "east \"1\"");
        assert_eq!(attrs[1]["value"]["stringValue"], "outbound|8080||a;b");
        assert_eq!(attrs[2]["value"]["stringValue"], "reviews");
    }
}
