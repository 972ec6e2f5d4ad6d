//! A conflict with another field manager (HTTP 409 from server-side
//! apply): which fields, owned by whom.

use kube::core::Status;

/// One field another manager owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldConflict {
    pub manager: String,
    pub field: String,
}

/// The fields and managers of a 409 from server-side apply: from the
/// status causes (`FieldManagerConflict`, `conflict with "kubectl"` at
/// `.spec.hosts`), else parsed from the message (`Apply failed with 1
/// conflict: conflict with "kubectl" using networking.istio.io/v1:
/// .spec.hosts`).
pub fn field_conflicts(status: &Status) -> Vec<FieldConflict> {
    let from_causes: Vec<FieldConflict> = status
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .filter(|c| c.reason == "FieldManagerConflict")
        .filter_map(|c| {
            Some(FieldConflict {
                manager: quoted(&c.message)?.to_string(),
                field: c.field.clone(),
            })
        })
        .collect();
    if !from_causes.is_empty() {
        return from_causes;
    }
    conflicts_from_message(&status.message)
}

fn quoted(text: &str) -> Option<&str> {
    let start = text.find('"')? + 1;
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// `… conflict(s) with "M" [using V]: .f` or `…:\n- .f\n- .g`, per manager.
pub fn conflicts_from_message(message: &str) -> Vec<FieldConflict> {
    let mut out = Vec::new();
    for part in message.split(" with \"").skip(1) {
        let Some(end) = part.find('"') else { continue };
        let manager = &part[..end];
        let rest = &part[end + 1..];
        let Some(colon) = rest.find(':') else {
            continue;
        };
        let fields = &rest[colon + 1..];
        // The fields run to the next manager's "conflict(s) with".
        let fields = fields.split("conflict").next().unwrap_or(fields);
        for field in fields
            .split('\n')
            .map(|l| {
                l.trim()
                    .trim_start_matches("- ")
                    .trim()
                    .trim_end_matches(',')
            })
            .filter(|l| l.starts_with('.'))
        {
            out.push(FieldConflict {
                manager: manager.to_string(),
                field: field.to_string(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_conflict_from_the_message() {
        let found = conflicts_from_message(
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using networking.istio.io/v1: .spec.hosts",
        );
        assert_eq!(
            found,
            vec![FieldConflict {
                manager: "kubectl-edit".into(),
                field: ".spec.hosts".into()
            }]
        );
    }

    #[test]
    fn several_managers_and_fields_from_the_message() {
        let found = conflicts_from_message(
            "Apply failed with 3 conflicts: conflicts with \"a\":\n- .spec.x\n- .spec.y\nconflict with \"b\" using v1: .spec.z",
        );
        let pairs: Vec<(&str, &str)> = found
            .iter()
            .map(|c| (c.manager.as_str(), c.field.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![("a", ".spec.x"), ("a", ".spec.y"), ("b", ".spec.z")]
        );
    }
}
