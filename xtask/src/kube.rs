//! The real Kubernetes API server the controller's kube tier runs against.
//!
//! No ready-made `kube-apiserver` binary is installable here, but Debian's
//! `kubernetes` source package (1.20.2, bookworm) carries its vendored Go
//! dependencies and builds one offline. The binary is cached outside the
//! clone (a fresh clone, or `cargo clean`, must not cost another build) and
//! built only when it is missing. `etcd-server` (3.4) is a plain Debian
//! package.
//!
//! One source patch is needed: the vendored `modern-go/reflect2` predates Go
//! 1.18's map layout, and under Debian's Go 1.19 the server dies with SIGSEGV
//! in `reflect2.(*UnsafeMapType).UnsafeIterate` on the first CRD create. The
//! vendored copy is replaced by Debian's packaged reflect2 (1.0.2), which
//! has the same API.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{apt_install_missing, run, step};

pub const KUBE_VERSION: &str = "1.20.2";
/// Where the built server is kept; `TIDEWAY_KUBE_CACHE` overrides it.
const DEFAULT_CACHE: &str = "/var/cache/tideway";
/// What the build and the kube tier need from Debian.
const KUBE_PACKAGES: &[&str] = &[
    "golang-go",
    "rsync",
    "jq",
    "golang-github-modern-go-reflect2-dev",
    "etcd-server",
    "xz-utils",
];
/// Debian's packaged reflect2, copied over the vendored one.
const REFLECT2_SRC: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";
const DEB_SRC_FILE: &str = "/etc/apt/sources.list.d/tideway-deb-src.sources";

/// What the kube tier is given: the API server and etcd binaries.
pub struct KubeBinaries {
    pub apiserver: PathBuf,
    pub etcd: PathBuf,
}

fn cache_dir() -> PathBuf {
    std::env::var_os("TIDEWAY_KUBE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// The cached server's path, whether or not it exists yet.
pub fn apiserver_path() -> PathBuf {
    cache_dir().join(format!("kube-apiserver-{KUBE_VERSION}"))
}

/// Install etcd and the build's packages if missing, and build
/// `kube-apiserver` unless the cached binary is there.
pub fn ensure() -> Result<KubeBinaries> {
    apt_install_missing(KUBE_PACKAGES)?;
    let etcd = PathBuf::from("/usr/bin/etcd");
    if !etcd.exists() {
        bail!("etcd-server is installed but /usr/bin/etcd is missing");
    }
    let apiserver = apiserver_path();
    if apiserver.exists() {
        step(&format!(
            "kube-apiserver {KUBE_VERSION}: {} (cached)",
            apiserver.display()
        ));
    } else {
        build(&apiserver)?;
    }
    Ok(KubeBinaries { apiserver, etcd })
}

fn build(out: &Path) -> Result<()> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("could not create {}", cache.display()))?;
    step(&format!(
        "building kube-apiserver {KUBE_VERSION} from Debian's kubernetes source package \
         (about 7 minutes on 2 cores, once; cached at {})",
        out.display()
    ));
    ensure_deb_src()?;
    // A build directory of its own per run: a build killed half-way leaves
    // nothing a later run would trust.
    let work = cache.join(format!("build-kubernetes-{}", std::process::id()));
    if work.exists() {
        std::fs::remove_dir_all(&work).ok();
    }
    std::fs::create_dir_all(&work)?;
    let result = build_in(&work, out);
    // 1.3 GB of sources and Go build cache; only the binary is kept.
    std::fs::remove_dir_all(&work).ok();
    result
}

fn build_in(work: &Path, out: &Path) -> Result<()> {
    run(
        Command::new("apt-get")
            .args(["source", "--download-only", "-q", "kubernetes"])
            .current_dir(work),
        "apt-get source --download-only kubernetes",
    )?;
    let orig = std::fs::read_dir(work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kubernetes_") && n.contains(".orig.tar"))
        })
        .context("apt-get source kubernetes fetched no .orig tarball")?;
    run(
        Command::new("tar").arg("xf").arg(&orig).current_dir(work),
        "unpacking the kubernetes orig tarball",
    )?;
    let src = work.join(format!("kubernetes-{KUBE_VERSION}"));
    if !src.join("Makefile").exists() {
        bail!(
            "the orig tarball did not unpack to {} (Debian's kubernetes is no longer {KUBE_VERSION}?)",
            src.display()
        );
    }
    swap_reflect2(&src)?;
    let gocache = work.join("go-build-cache");
    run(
        Command::new("nice")
            .args(["-n", "10", "make", "WHAT=cmd/kube-apiserver"])
            .current_dir(&src)
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=vendor")
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", &gocache)
            .env("GOPATH", work.join("gopath")),
        "make WHAT=cmd/kube-apiserver",
    )?;
    let built = src.join("_output/bin/kube-apiserver");
    let built = if built.exists() {
        built
    } else {
        src.join("_output/local/bin/linux/amd64/kube-apiserver")
    };
    if !built.exists() {
        bail!(
            "make succeeded but no kube-apiserver under {}/_output",
            src.display()
        );
    }
    // Copy next to the target, then rename: a reader never sees half a file.
    let partial = out.with_extension("partial");
    std::fs::copy(&built, &partial)
        .with_context(|| format!("could not copy the server to {}", partial.display()))?;
    std::fs::rename(&partial, out)?;
    step(&format!("kube-apiserver {KUBE_VERSION}: {}", out.display()));
    Ok(())
}

/// `apt-get source` needs a deb-src entry; the machine's sources are deb822
/// files with `Types: deb` only.
fn ensure_deb_src() -> Result<()> {
    let has_src = Command::new("apt-cache")
        .args(["showsrc", "kubernetes"])
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false);
    if has_src {
        return Ok(());
    }
    step(&format!(
        "adding a deb-src entry for bookworm main ({DEB_SRC_FILE})"
    ));
    std::fs::write(
        DEB_SRC_FILE,
        "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\
         Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )
    .with_context(|| format!("could not write {DEB_SRC_FILE} (run as root)"))?;
    run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get update (deb-src)",
    )
}

/// Replace the vendored reflect2's Go and assembly files with Debian's.
fn swap_reflect2(src: &Path) -> Result<()> {
    let vendored = src.join("vendor/github.com/modern-go/reflect2");
    let debian = Path::new(REFLECT2_SRC);
    for entry in std::fs::read_dir(&vendored)
        .with_context(|| format!("no vendored reflect2 at {}", vendored.display()))?
        .flatten()
    {
        let path = entry.path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("go" | "s")) {
            std::fs::remove_file(&path)?;
        }
    }
    let mut copied = 0;
    for entry in std::fs::read_dir(debian)
        .with_context(|| format!("Debian's reflect2 is missing at {}", debian.display()))?
        .flatten()
    {
        let path = entry.path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("go" | "s")) {
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            if name_str.ends_with("_test.go") {
                continue;
            }
            std::fs::copy(&path, vendored.join(&name))?;
            copied += 1;
        }
    }
    if copied == 0 {
        bail!("no reflect2 sources under {}", debian.display());
    }
    step(&format!(
        "vendored reflect2 replaced by Debian's ({copied} files)"
    ));
    Ok(())
}
