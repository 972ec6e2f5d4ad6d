//! The filter's OCI image as `tideway image` handles it: where an image is
//! (a registry or a local layout), how to reach a registry, a push and what
//! a WasmPlugin needs to load what was pushed. The CLI only parses flags
//! and prints; this is the part tests can drive without it.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use tideway_oci::auth::{self, CredentialSource, Secret};
use tideway_oci::fetched::FetchedImage;
use tideway_oci::image::{self, BuildOptions, Image};
use tideway_oci::istio::{self, Rules};
use tideway_oci::layout::Layout;
use tideway_oci::reference::ImageRef;
use tideway_oci::registry::{PushReport, Registry, RegistryOptions};
use tideway_oci::retry::RetryPolicy;
use tideway_oci::Digest;

/// The imagePullSecret named when credentials were used and none was given.
pub const DEFAULT_PULL_SECRET: &str = "tideway-pull";

/// An image named on the command line: in a registry, or in a local layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Remote(ImageRef),
    Layout { dir: PathBuf, tag: Option<String> },
}

impl ImageSource {
    /// `oci:DIR[:TAG]` is a layout; anything else a registry reference.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if let Some(rest) = s.strip_prefix("oci:").filter(|r| !r.starts_with("//")) {
            // The last `:` separates the tag only if what follows has no
            // `/`: a directory may contain colons.
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !d.is_empty() => (d, Some(t.to_string())),
                _ => (rest, None),
            };
            return Ok(Self::Layout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        Ok(Self::Remote(ImageRef::parse(s)?))
    }
}

/// How to reach a registry: what the registry flags say, the password
/// already read.
#[derive(Debug, Clone, Default)]
pub struct RegistryAccess {
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Docker config.json or a dockerconfigjson Secret; `None`: the usual
    /// places.
    pub docker_config: Option<PathBuf>,
    pub ca_files: Vec<PathBuf>,
    pub plain_http: bool,
    /// Attempts per registry operation on transient failures.
    pub attempts: u32,
}

/// A registry client and where its credentials came from (the pull-secret
/// advice after a push depends on it).
pub struct Connected {
    pub registry: Registry,
    pub source: CredentialSource,
}

impl RegistryAccess {
    pub fn client(&self, registry_host: &str) -> anyhow::Result<Registry> {
        Ok(self.connect(registry_host)?.registry)
    }

    pub fn connect(&self, registry_host: &str) -> anyhow::Result<Connected> {
        let config = self.docker_config.clone().or_else(auth::docker_config_path);
        let (credentials, source) = auth::resolve(
            registry_host,
            self.username.clone(),
            self.password.clone(),
            config.as_deref(),
        )?;
        tracing::debug!(registry = registry_host, who = %credentials.describe(), %source, "registry credentials");
        let mut ca_certs_pem = Vec::new();
        for f in &self.ca_files {
            ca_certs_pem.push(
                std::fs::read(f).with_context(|| format!("reading --ca-file {}", f.display()))?,
            );
        }
        let registry = Registry::new(RegistryOptions {
            credentials,
            plain_http: self.plain_http,
            ca_certs_pem,
            retry: RetryPolicy {
                attempts: self.attempts.max(1),
                ..RetryPolicy::default()
            },
            ..RegistryOptions::default()
        })?;
        Ok(Connected { registry, source })
    }
}

/// A single-threaded runtime for one registry operation.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Read `src`, every blob verified; also the URL Istio's messages would
/// name it by.
pub fn fetch(src: &ImageSource, access: &RegistryAccess) -> anyhow::Result<(FetchedImage, String)> {
    match src {
        ImageSource::Layout { dir, tag } => {
            let img = Layout::open(dir)?.read_image(tag.as_deref())?;
            Ok((img, format!("oci:{}", dir.display())))
        }
        ImageSource::Remote(r) => {
            let client = access.client(r.registry())?;
            let img = runtime()?.block_on(client.pull(r))?;
            Ok((img, format!("oci://{r}")))
        }
    }
}

pub fn read_wasm(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// What `tideway image push` pushes: the image of a layout (`oci:DIR[:TAG]`)
/// as it is, else a `.wasm` file built into an image with `options`.
pub fn image_to_push(source: &str, options: &BuildOptions) -> anyhow::Result<Image> {
    if let Ok(ImageSource::Layout { dir, tag }) = ImageSource::parse(source) {
        return Ok(Layout::open(&dir)?.read_image(tag.as_deref())?.into_image());
    }
    let path = PathBuf::from(source);
    let wasm = read_wasm(&path)?;
    image::build(&wasm, options).with_context(|| path.display().to_string())
}

/// Save a fetched image to the layout `dir`, its manifest under `tag`.
pub fn save_to_layout(dir: &Path, img: &FetchedImage, tag: Option<&str>) -> anyhow::Result<()> {
    let layout = Layout::create(dir)?;
    for blob in std::iter::once(&img.config)
        .chain(img.layers.iter())
        .chain(std::iter::once(&img.manifest_bytes))
    {
        layout.put_blob(blob)?;
    }
    layout.write_image(&img.clone().into_image(), tag)?;
    Ok(())
}

/// A push done: the registry's report and the imagePullSecret a WasmPlugin
/// needs for it.
pub struct Pushed {
    pub report: PushReport,
    pub pull_secret: Option<String>,
}

/// Push `image` to `reference`. `pull_secret_flag` names the pull Secret;
/// one is needed only when the registry asked for credentials.
pub fn push(
    connected: &Connected,
    image: &Image,
    reference: &ImageRef,
    pull_secret_flag: Option<&str>,
) -> anyhow::Result<Pushed> {
    let report = runtime()?.block_on(connected.registry.push(image, reference))?;
    let pull_secret =
        pull_secret_name(&connected.source, pull_secret_flag).filter(|_| report.authenticated);
    Ok(Pushed {
        report,
        pull_secret,
    })
}

/// Whether Istio's agent would load `image` (the reason: `tideway image
/// verify`).
pub fn istio_accepts(image: &Image) -> anyhow::Result<bool> {
    let layers: Vec<Vec<u8>> = image.layers.iter().map(|l| l.data.clone()).collect();
    let manifest = image_manifest(&image.manifest)?;
    Ok(istio::extract("", &manifest, &layers, Rules::default()).is_ok())
}

fn image_manifest(bytes: &[u8]) -> anyhow::Result<tideway_oci::manifest::ImageManifest> {
    match tideway_oci::manifest::Manifest::parse(bytes, None)? {
        tideway_oci::manifest::Manifest::Image(m) => Ok(m),
        tideway_oci::manifest::Manifest::Index(_) => {
            bail!("expected an image manifest, found an index")
        }
    }
}

/// The imagePullSecret a WasmPlugin needs after a push with credentials from `source`.
pub fn pull_secret_name(source: &CredentialSource, flag: Option<&str>) -> Option<String> {
    match (source, flag) {
        (CredentialSource::None, _) => None,
        (_, Some(name)) => Some(name.to_string()),
        (CredentialSource::KubernetesSecret { name, .. }, None) => Some(name.clone()),
        (_, None) => Some(DEFAULT_PULL_SECRET.to_string()),
    }
}

/// How to create the pull Secret from what the push used (no secret values).
pub fn pull_secret_hint(name: &str, source: &CredentialSource, registry: &str) -> Option<String> {
    match source {
        CredentialSource::KubernetesSecret { .. } | CredentialSource::None => None,
        CredentialSource::DockerConfig(path) => Some(format!(
            "kubectl create secret generic {name} --type=kubernetes.io/dockerconfigjson --from-file=.dockerconfigjson={}",
            path.display()
        )),
        CredentialSource::Explicit | CredentialSource::Helper(_) => Some(format!(
            "kubectl create secret docker-registry {name} --docker-server={registry} --docker-username=USER --docker-password=PASSWORD"
        )),
    }
}

/// The `spec` fields of a WasmPlugin that loads the pushed image, as YAML.
pub fn wasm_plugin_fragment(url: &str, digest: &Digest, pull_secret: Option<&str>) -> String {
    let mut out = format!(
        "spec:\n  url: {url}\n  sha256: {}\n  imagePullPolicy: IfNotPresent\n",
        digest.hex()
    );
    if let Some(name) = pull_secret {
        out.push_str(&format!("  imagePullSecret: {name}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_layout_names_split_dir_and_tag() {
        match ImageSource::parse("oci:out/dir:v1").unwrap() {
            ImageSource::Layout { dir, tag } => {
                assert_eq!(dir, PathBuf::from("out/dir"));
                assert_eq!(tag.as_deref(), Some("v1"));
            }
            ImageSource::Remote(_) => panic!("layout expected"),
        }
        assert!(matches!(
            ImageSource::parse("oci:out/dir").unwrap(),
            ImageSource::Layout { tag: None, .. }
        ));
        assert!(matches!(
            ImageSource::parse("oci://reg.example/f:v1").unwrap(),
            ImageSource::Remote(_)
        ));
    }

    #[test]
    fn the_fragment_names_the_pull_secret_only_when_credentials_were_used() {
        let d = Digest::of(b"m");
        let url = format!("oci://reg.example/f@{d}");
        assert_eq!(
            wasm_plugin_fragment(&url, &d, None),
            format!(
                "spec:\n  url: {url}\n  sha256: {}\n  imagePullPolicy: IfNotPresent\n",
                d.hex()
            )
        );
        assert!(wasm_plugin_fragment(&url, &d, Some("regcred"))
            .ends_with("  imagePullSecret: regcred\n"));
        let secret = CredentialSource::KubernetesSecret {
            path: "s.json".into(),
            name: "from-secret".into(),
        };
        assert_eq!(pull_secret_name(&CredentialSource::None, Some("x")), None);
        assert_eq!(
            pull_secret_hint("p", &CredentialSource::DockerConfig("/h/.docker/config.json".into()), "r:5000").as_deref(),
            Some("kubectl create secret generic p --type=kubernetes.io/dockerconfigjson --from-file=.dockerconfigjson=/h/.docker/config.json")
        );
        assert!(pull_secret_hint("p", &secret, "r:5000").is_none());
        assert!(pull_secret_hint("p", &CredentialSource::Explicit, "r:5000")
            .is_some_and(|h| h.contains("docker-registry p --docker-server=r:5000")));
        assert_eq!(
            pull_secret_name(&secret, None).as_deref(),
            Some("from-secret")
        );
        assert_eq!(pull_secret_name(&secret, Some("x")).as_deref(), Some("x"));
        assert_eq!(
            pull_secret_name(&CredentialSource::Explicit, None).as_deref(),
            Some(DEFAULT_PULL_SECRET)
        );
    }
}
