//! Tideway's controller: turns traffic policies into Istio resources and
//! distributes the filter. The CLI in `main.rs` is a thin shell over this.
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
//! - [`weights`]: the run-time weights API the members' filters poll
//!   (`tideway serve-weights`, and `tideway run`), and its client.
//!
//! For other tools and tests, [`render_texts`] is the whole pipeline from
//! the two documents' text to the rendered files.

pub mod api;
pub mod apply;
pub mod check_config;
pub mod compile;
pub mod field_error;
pub mod istio;
pub mod load;
pub mod observe;
pub mod render;
pub mod validate;
pub mod weights;

pub use compile::{compile, Compiled, Image};
pub use field_error::{FieldError, FieldErrors};

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
