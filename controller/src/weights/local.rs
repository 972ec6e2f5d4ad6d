//! A weights server for local use (`tideway serve-weights`): its policies
//! and Fleet come from files instead of the hub.

use crate::api::{Fleet, TrafficPolicy};
use crate::{load, FieldErrors};
use std::path::{Path, PathBuf};

/// The policies in `paths` (files, or directories of them) and the Fleet at
/// `fleet`; errors name the file. No policy at all is an error: a server
/// with nothing to serve is a mistake in the paths.
pub fn read_inputs(
    paths: &[PathBuf],
    fleet: Option<&Path>,
) -> anyhow::Result<(Vec<TrafficPolicy>, Option<Fleet>)> {
    let policies = load::policies_from_paths(paths)?;
    if policies.is_empty() {
        anyhow::bail!(
            "no TrafficPolicy found in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let fleet = match fleet {
        Some(path) => Some(load::fleet_from_str(&load::read(path)?, "Fleet").map_err(
            |mut e: FieldErrors| {
                e.source = path.display().to_string();
                anyhow::anyhow!("{e}")
            },
        )?),
        None => None,
    };
    Ok((policies, fleet))
}
