//! Tideway's controller: turns traffic policies into Istio resources and
//! distributes the filter. The CLI (`main.rs`, `cli/`) is a thin shell over
//! this.
//!
//! The compile half, one module per step (data flows one way):
//! - [`api`]: the `TrafficPolicy` and `Fleet` resources (→ CRDs);
//! - [`load`]: YAML/JSON documents → typed resources, errors at field paths;
//! - [`validate`]: what the schema cannot check;
//! - [`compile`]: policy × fleet → Istio objects per member (pure);
//! - [`observe`]: alerting rules and dashboard for the filter's metrics;
//! - [`render`]: objects → YAML files per member, or for Karmada;
//! - [`check_config`]: the filter's own configuration, checked as it parses it.
//!
//! The distribution half:
//! - [`apply`]: a render rolled out to a Fleet's member clusters, wave by
//!   wave (server-side apply, health gate, prune);
//! - [`status`]: what each member has of a policy, drift, health
//!   (`tideway status`);
//! - [`weights`]: the run-time weights API the members' filters poll
//!   (`tideway serve-weights`, and `tideway run`), and its client;
//! - [`image`]: the filter's OCI image pushed, pulled and checked
//!   (`tideway image`).
//!
//! For other tools and tests, [`render_texts`] is the whole pipeline from
//! the two documents' text to the rendered files.

pub mod api;
pub mod apply;
pub mod check_config;
pub mod compile;
pub mod container_image;
pub mod drain;
pub mod field_error;
pub mod image;
pub mod install;
pub mod istio;
pub mod load;
pub mod observe;
pub mod render;
pub mod run;
pub mod status;
pub mod ui;
pub mod validate;
pub mod weights;

pub use compile::{compile, Compiled, Image};
pub use field_error::{FieldError, FieldErrors};

use std::path::Path;

/// A policy and its fleet read from files, compiled: where `tideway
/// render`, `apply` and `status` start.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub policy: api::TrafficPolicy,
    pub fleet: api::Fleet,
    pub compiled: Compiled,
}

impl Loaded {
    /// The policy's identity (what prune and status look objects up by).
    pub fn policy_ref(&self) -> apply::PolicyRef {
        apply::PolicyRef::of(&self.policy)
    }
}

/// Read the policy and fleet files (YAML or JSON) and compile; `image`
/// overrides `spec.plugin.image`. Errors name the file and the field path.
pub fn load_and_compile(
    policy_path: &Path,
    fleet_path: &Path,
    image: Option<&str>,
) -> anyhow::Result<Loaded> {
    let named = |mut e: FieldErrors, path: &Path| {
        e.source = if e.source.is_empty() {
            path.display().to_string()
        } else {
            format!("{} ({})", path.display(), e.source)
        };
        anyhow::anyhow!("{e}")
    };
    let policy_text = load::read(policy_path)?;
    let fleet_text = load::read(fleet_path)?;
    let policy =
        load::policy_from_str(&policy_text, "TrafficPolicy").map_err(|e| named(e, policy_path))?;
    let fleet = load::fleet_from_str(&fleet_text, "Fleet").map_err(|e| named(e, fleet_path))?;
    let image = image
        .map(|r| Image::parse("--image", r))
        .transpose()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let compiled = compile(&policy, &fleet, image.as_ref()).map_err(|e| named(e, policy_path))?;
    Ok(Loaded {
        policy,
        fleet,
        compiled,
    })
}

/// Parse a policy and a fleet (YAML or JSON text), compile, and lay out the
/// files `tideway render` writes (per member, or with `karmada` the Karmada
/// form). `image` overrides the policy's `spec.plugin.image`.
pub fn render_texts(
    policy_text: &str,
    fleet_text: &str,
    image: Option<&str>,
    karmada: bool,
) -> Result<Vec<render::RenderedFile>, FieldErrors> {
    let policy = load::policy_from_str(policy_text, "policy")?;
    let fleet = load::fleet_from_str(fleet_text, "fleet")?;
    let image = image
        .map(|r| Image::parse("--image", r))
        .transpose()
        .map_err(FieldErrors::from)?;
    let compiled = compile(&policy, &fleet, image.as_ref())?;
    let name = policy.metadata.name.as_deref().unwrap_or("");
    Ok(if karmada {
        render::karmada(&compiled, name)
    } else {
        render::per_member(&compiled)
    })
}
