//! Tideway's controller: turns traffic policies into Istio resources and
//! distributes the filter. The CLI in `main.rs` is a thin shell over this.
