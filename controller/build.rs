//! `tideway --version` says which commit it was built from and, when the
//! build was given one, the digest of the filter image it was released with
//! (`TIDEWAY_FILTER_DIGEST`, set by `cargo xtask image` and `cargo xtask dist`).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    let mut line = format!(
        "{} (commit {})",
        env!("CARGO_PKG_VERSION"),
        commit.as_deref().unwrap_or("unknown")
    );
    if let Some(digest) = std::env::var("TIDEWAY_FILTER_DIGEST")
        .ok()
        .filter(|d| !d.is_empty())
    {
        line.push_str(&format!(", filter image {digest}"));
    }
    println!("cargo:rustc-env=TIDEWAY_VERSION_LINE={line}");
    println!("cargo:rerun-if-env-changed=TIDEWAY_FILTER_DIGEST");
    // A new commit moves HEAD's ref (or HEAD itself when detached).
    for path in ["HEAD"]
        .into_iter()
        .filter_map(|p| git(&["rev-parse", "--git-path", p]))
        .chain(
            git(&["symbolic-ref", "-q", "HEAD"])
                .and_then(|r| git(&["rev-parse", "--git-path", &r])),
        )
    {
        println!("cargo:rerun-if-changed={path}");
    }
}
