//! `tideway image …`: package the filter as an OCI image, push it, pull it,
//! inspect it, and check whether Istio would accept it. A thin shell over
//! the `tideway-oci` library; all rules live there.

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use tideway_controller::image::{self as ops, ImageSource, RegistryAccess};
use tideway_oci::auth::Secret;
use tideway_oci::fetched::FetchedImage;
use tideway_oci::image::{self, BuildOptions, ImageFormat};
use tideway_oci::istio::{self, Rules};
use tideway_oci::layout::Layout;
use tideway_oci::reference::ImageRef;
use tideway_oci::registry::BlobStatus;
use tideway_oci::Digest;

const IMAGE_ABOUT: &str =
    "Package the filter as an OCI image for Istio's WasmPlugin, push/pull it, check it";

const IMAGE_LONG_ABOUT: &str = "\
Package the filter (.wasm) as an OCI image that Istio's WasmPlugin can fetch,
push it to a registry, pull it back, inspect it, and check whether Istio would
accept it.

Typical flow:
  tideway image build target/tideway/tideway_filter.wasm -o out/filter-oci --tag v1
  tideway image push oci:out/filter-oci:v1 registry.example.com/tideway/filter:v1
  tideway image verify registry.example.com/tideway/filter:v1

`push` prints the WasmPlugin fragment to use, e.g.:
  spec:
    url: oci://registry.example.com/tideway/filter@sha256:3b1f…
    sha256: 3b1f…
    imagePullPolicy: IfNotPresent
    imagePullSecret: tideway-pull     (only when the registry asked for credentials)

IMPORTANT: for oci:// URLs Istio compares `sha256` with the digest of the image
MANIFEST, not with the sha256 of the .wasm file (a frequent mistake, see
istio/istio#37565 and #38989). `sha256sum plugin.wasm` is the wrong value;
use the manifest digest `push`, `build` and `inspect` print.

Image formats (--format):
  compat         (default) OCI image, one application/vnd.oci.image.layer.v1.tar+gzip
                 layer holding plugin.wasm. This is what Istio accepts.
  wasm-artifact  CNCF TAG-Runtime Wasm artifact (application/vnd.wasm.config.v0+json
                 config, one application/wasm layer) for wasmtime/Spin-style runtimes.
                 Istio's fetcher does NOT accept it (istio/istio#39990).

Builds are reproducible: the same .wasm always gives the same manifest digest.

Images are named either by a registry reference (host[:port]/repo[:tag][@sha256:…],
an oci:// prefix is fine) or by an OCI layout directory as oci:DIR[:TAG].

Registry credentials, first match wins (Docker's order):
  1. --username with --password-stdin (or TIDEWAY_REGISTRY_USERNAME /
     TIDEWAY_REGISTRY_PASSWORD);
  2. the Docker config: --docker-config FILE, else $DOCKER_CONFIG/config.json,
     else ~/.docker/config.json: `credHelpers` for the registry, else
     `credsStore` (both run `docker-credential-<name> get`), else `auths`
     (`auth`, `username`/`password`, `identitytoken`, `registrytoken`);
  3. anonymous.
--docker-config also takes a Kubernetes Secret of type
kubernetes.io/dockerconfigjson, YAML or JSON (`kubectl get secret NAME -o yaml`),
so the Secret a WasmPlugin's imagePullSecret names also serves the push.
Registries with token auth (Docker Hub, Harbor, GHCR, GitLab, Quay,
Distribution `auth: token`) are handled: the credentials are exchanged for a
token per repository, renewed when the registry refuses it.
TLS is always used unless --plain-http is given; trust a private CA with
--ca-file. A registry that speaks the other protocol is recognised at once.
Transient failures (connection refused, 5xx, 429) are retried with backoff.
Secrets never appear in output or logs.";

/// Arguments of `tideway image`.
#[derive(Debug, Args)]
#[command(about = IMAGE_ABOUT, long_about = IMAGE_LONG_ABOUT)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build an OCI image layout directory from a .wasm (reproducible).
    Build(BuildArgs),
    /// Build the controller's container image from a static `tideway` (reproducible).
    #[command(long_about = BUILD_CONTROLLER_LONG_ABOUT)]
    BuildController(BuildControllerArgs),
    /// Push a .wasm or an OCI layout image to a registry; prints the WasmPlugin url and sha256.
    Push(PushArgs),
    /// Pull an image, verify every digest and size, and extract plugin.wasm exactly as Istio does.
    Pull(PullArgs),
    /// Show an image's manifest digest, layers and the WasmPlugin fields to use.
    Inspect(InspectArgs),
    /// Would Istio accept this image? Prints Istio's reason when not (exit status 1).
    Verify(VerifyArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    /// OCI image with one tar+gzip layer holding plugin.wasm (what Istio accepts).
    Compat,
    /// CNCF TAG-Runtime Wasm artifact (application/wasm layer). NOT accepted by Istio (istio/istio#39990).
    WasmArtifact,
}

impl From<FormatArg> for ImageFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Compat => ImageFormat::Compat,
            FormatArg::WasmArtifact => ImageFormat::WasmArtifact,
        }
    }
}

#[derive(Debug, Args)]
struct BuildOpts {
    /// Image format. `wasm-artifact` is for other runtimes: Istio's fetcher does not accept it (istio/istio#39990).
    #[arg(long, value_enum, default_value = "compat")]
    format: FormatArg,
    /// Manifest annotation KEY=VALUE (repeatable), e.g. org.opencontainers.image.source=https://…
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = parse_annotation)]
    annotations: Vec<(String, String)>,
}

const BUILD_CONTROLLER_LONG_ABOUT: &str = "\
Build the controller's container image into an OCI layout directory: the
`tideway` program at /tideway, a CA bundle at /etc/ssl/certs/ca-certificates.crt
(for TLS to member API servers), /etc/passwd and /etc/group naming user 65532,
and nothing else: no shell, no package manager, no libraries. It runs as
65532:65532 with `run` as its arguments, and works on a read-only root
filesystem. The same program and bundle always give the same manifest digest.

The program must be statically linked; `cargo xtask image` builds one and
calls this command. Then push it and pin the Deployment to its digest:
  tideway image push oci:target/tideway/controller-oci:0.1.0 registry.example.com/tideway/controller:0.1.0";

#[derive(Debug, Args)]
struct BuildControllerArgs {
    /// The static `tideway` program to package (default: this one).
    #[arg(long)]
    program: Option<PathBuf>,
    /// PEM CA bundle to include.
    #[arg(long, default_value = tideway_controller::container_image::DEFAULT_CA_BUNDLE)]
    ca_bundle: PathBuf,
    /// Output OCI layout directory (created, or added to if it exists).
    #[arg(short, long)]
    output: PathBuf,
    /// Tag to record in the layout's index.json (default: this version).
    #[arg(long)]
    tag: Option<String>,
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// The filter module (a wasm core module; anything else is refused).
    wasm: PathBuf,
    /// Output OCI layout directory (created, or added to if it exists).
    #[arg(short, long)]
    output: PathBuf,
    /// Tag to record in the layout's index.json.
    #[arg(long, default_value = "latest")]
    tag: String,
    #[command(flatten)]
    build: BuildOpts,
}

#[derive(Debug, Args)]
struct PushArgs {
    /// What to push: a .wasm file (built on the fly) or an OCI layout as oci:DIR[:TAG].
    source: String,
    /// Destination: host[:port]/repository[:tag] (or @sha256:… to pin).
    reference: String,
    /// The imagePullSecret to name in the printed WasmPlugin fragment when
    /// credentials were used [default: the Secret's name with a Secret
    /// --docker-config, else tideway-pull].
    #[arg(long, value_name = "NAME")]
    pull_secret: Option<String>,
    #[command(flatten)]
    build: BuildOpts,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
struct PullArgs {
    /// Image: host[:port]/repository[:tag|@sha256:…].
    reference: String,
    /// Where to write the module.
    #[arg(short, long, default_value = "plugin.wasm")]
    output: PathBuf,
    /// Also save the pulled image as an OCI layout directory.
    #[arg(long, value_name = "DIR")]
    layout: Option<PathBuf>,
    #[command(flatten)]
    istio: IstioArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// Image: a registry reference, or oci:DIR[:TAG].
    image: String,
    /// Print the raw manifest JSON instead of a summary.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    istio: IstioArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Image: a registry reference, or oci:DIR[:TAG].
    image: String,
    /// The WasmPlugin's `sha256` value to check (hex MANIFEST digest, not the .wasm file's hash).
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    #[command(flatten)]
    istio: IstioArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
struct IstioArgs {
    /// Istio's ISTIO_WASM_MAX_BINARY_SIZE_BYTES (the agent's cap on the module).
    #[arg(long, value_name = "BYTES", default_value_t = istio::DEFAULT_MAX_BINARY_SIZE)]
    max_binary_size: u64,
}

/// How to reach a registry. Secrets are `Secret`s: `{:?}` of these args is safe.
#[derive(Debug, Args)]
struct RegistryArgs {
    /// Registry user name.
    #[arg(long, env = "TIDEWAY_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Read the password (or access token) from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Password from the environment (never pass it as a flag: it would show in `ps`).
    #[arg(long = "password-env-only", env = "TIDEWAY_REGISTRY_PASSWORD", hide = true, hide_env_values = true, value_parser = parse_secret)]
    password: Option<Secret>,
    /// Docker config.json, or a kubernetes.io/dockerconfigjson Secret (YAML or JSON), with credentials [default: $DOCKER_CONFIG/config.json or ~/.docker/config.json].
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for the registry's TLS (repeatable).
    #[arg(long = "ca-file", value_name = "PEM")]
    ca_files: Vec<PathBuf>,
    /// Talk plain HTTP instead of HTTPS (only for a local/test registry).
    #[arg(long)]
    plain_http: bool,
    /// Attempts per registry operation on transient failures (with exponential backoff).
    #[arg(long, default_value_t = 4)]
    attempts: u32,
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

fn parse_annotation(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("annotation `{s}` is not KEY=VALUE")),
    }
}

impl BuildOpts {
    fn options(&self) -> BuildOptions {
        BuildOptions {
            format: self.format.into(),
            annotations: self.annotations.iter().cloned().collect::<BTreeMap<_, _>>(),
        }
    }
}

impl RegistryArgs {
    /// The flags as a [`RegistryAccess`]; reads the password from standard
    /// input when asked to, so only call it when a registry is contacted.
    fn access(&self) -> anyhow::Result<RegistryAccess> {
        let mut password = self.password.clone();
        if self.password_stdin {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the password from standard input")?;
            password = Some(Secret::new(s.trim_end_matches(['\r', '\n'])));
        }
        Ok(RegistryAccess {
            username: self.username.clone(),
            password,
            docker_config: self.docker_config.clone(),
            ca_files: self.ca_files.clone(),
            plain_http: self.plain_http,
            attempts: self.attempts,
        })
    }
}

fn fetch(src: &ImageSource, registry: &RegistryArgs) -> anyhow::Result<(FetchedImage, String)> {
    let access = match src {
        ImageSource::Remote(_) => registry.access()?,
        ImageSource::Layout { .. } => RegistryAccess::default(),
    };
    ops::fetch(src, &access)
}

fn print_wasm_plugin_fields(url: &str, digest: &Digest) {
    println!();
    println!("WasmPlugin fields (sha256 is the image MANIFEST digest, not the .wasm file's hash):");
    println!("  url: {url}");
    println!("  sha256: {}", digest.hex());
}

/// Runs `tideway image …`.
pub fn run(args: ImageArgs) -> anyhow::Result<()> {
    match args.command {
        ImageCommand::Build(a) => build(a),
        ImageCommand::BuildController(a) => build_controller(a),
        ImageCommand::Push(a) => push(a),
        ImageCommand::Pull(a) => pull(a),
        ImageCommand::Inspect(a) => inspect(a),
        ImageCommand::Verify(a) => verify(a),
    }
}

fn build(a: BuildArgs) -> anyhow::Result<()> {
    let wasm = ops::read_wasm(&a.wasm)?;
    let image =
        image::build(&wasm, &a.build.options()).with_context(|| a.wasm.display().to_string())?;
    let layout = Layout::create(&a.output)?;
    layout.write_image(&image, Some(&a.tag))?;
    println!("wrote OCI layout {} (tag {})", a.output.display(), a.tag);
    println!("manifest digest: {}", image.manifest_digest());
    println!(
        "module sha256:   {} (NOT the value for WasmPlugin.sha256)",
        Digest::of(&wasm)
    );
    if matches!(a.build.format, FormatArg::WasmArtifact) {
        println!("note: wasm-artifact images are not accepted by Istio (istio/istio#39990)");
    }
    println!(
        "next: tideway image push oci:{}:{} <host>/<repo>:<tag>",
        a.output.display(),
        a.tag
    );
    Ok(())
}

fn build_controller(a: BuildControllerArgs) -> anyhow::Result<()> {
    let program_path = match a.program {
        Some(path) => path,
        None => std::env::current_exe().context("finding this program")?,
    };
    let program = std::fs::read(&program_path)
        .with_context(|| format!("reading {}", program_path.display()))?;
    let ca_bundle = std::fs::read(&a.ca_bundle)
        .with_context(|| format!("reading the CA bundle {}", a.ca_bundle.display()))?;
    let version = env!("CARGO_PKG_VERSION");
    let image =
        tideway_controller::container_image::controller_image(&program, &ca_bundle, version)
            .with_context(|| program_path.display().to_string())?;
    let tag = a.tag.unwrap_or_else(|| version.to_string());
    Layout::create(&a.output)?.write_image(&image, Some(&tag))?;
    let compressed: usize = image.blobs().map(|b| b.data.len()).sum();
    println!("wrote OCI layout {} (tag {tag})", a.output.display());
    println!("manifest digest: {}", image.manifest_digest());
    println!(
        "compressed size: {:.1} MiB",
        compressed as f64 / (1024.0 * 1024.0)
    );
    println!(
        "next: tideway image push oci:{}:{tag} <host>/<repo>:{tag}",
        a.output.display()
    );
    Ok(())
}

fn push(a: PushArgs) -> anyhow::Result<()> {
    let reference = ImageRef::parse(&a.reference)?;
    let image = ops::image_to_push(&a.source, &a.build.options())?;
    let connected = a.registry.access()?.connect(reference.registry())?;
    let ops::Pushed {
        report,
        pull_secret,
    } = ops::push(&connected, &image, &reference, a.pull_secret.as_deref())?;
    let source = &connected.source;
    println!("pushed {reference}");
    println!("manifest digest: {}", report.manifest_digest);
    for (d, status) in &report.blobs {
        let s = match status {
            BlobStatus::Uploaded => "uploaded",
            BlobStatus::AlreadyPresent => "already present, skipped",
        };
        println!("  {} {} ({} bytes): {s}", d.media_type, d.digest, d.size);
    }
    if tideway_controller::container_image::is_container_image(&image) {
        println!();
        println!("image for a Deployment (pinned by digest):");
        println!(
            "  {}/{}@{}",
            reference.registry(),
            reference.repository(),
            report.manifest_digest
        );
        return Ok(());
    }
    if !ops::istio_accepts(&image)? {
        println!(
            "warning: Istio would NOT accept this image; run `tideway image verify` for the reason"
        );
    }
    println!();
    println!(
        "WasmPlugin fragment (sha256 is the image MANIFEST digest, not the .wasm file's hash):"
    );
    print!(
        "{}",
        ops::wasm_plugin_fragment(
            &report.wasm_plugin_url(),
            &report.manifest_digest,
            pull_secret.as_deref()
        )
    );
    if let Some(name) = &pull_secret {
        println!(
            "imagePullSecret {name}: a kubernetes.io/dockerconfigjson Secret in the WasmPlugin's namespace with credentials for {} (credentials used here: {source})",
            reference.registry()
        );
        if let Some(hint) = ops::pull_secret_hint(name, source, reference.registry()) {
            println!("  create it with: {hint}");
        }
    }
    Ok(())
}

fn pull(a: PullArgs) -> anyhow::Result<()> {
    let reference = ImageRef::parse(&a.reference)?;
    let (img, url) = fetch(&ImageSource::Remote(reference.clone()), &a.registry)?;
    let accepted = img
        .istio_verdict(
            &url,
            Rules {
                max_binary_size: a.istio.max_binary_size,
            },
        )
        .map_err(|r| anyhow::anyhow!("Istio would reject {reference}: {r}"))?;
    std::fs::write(&a.output, &accepted.wasm)
        .with_context(|| format!("writing {}", a.output.display()))?;
    if let Some(dir) = &a.layout {
        ops::save_to_layout(dir, &img, reference.tag())?;
        println!("saved the image to OCI layout {}", dir.display());
    }
    println!("pulled {reference} ({})", accepted.variant);
    println!("manifest digest: {}", img.manifest_digest);
    println!(
        "wrote {} ({} bytes, sha256 {})",
        a.output.display(),
        accepted.wasm.len(),
        Digest::of(&accepted.wasm)
    );
    Ok(())
}

fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let src = ImageSource::parse(&a.image)?;
    let (img, url) = fetch(&src, &a.registry)?;
    if a.raw {
        println!("{}", String::from_utf8_lossy(&img.manifest_bytes));
        return Ok(());
    }
    println!("image: {}", a.image);
    if let Some(i) = &img.index_digest {
        println!("index digest: {i} (resolved to the linux/amd64 entry, as Istio does)");
    }
    println!("manifest digest: {}", img.manifest_digest);
    println!(
        "manifest media type: {}",
        img.manifest.media_type.as_deref().unwrap_or("(none; OCI)")
    );
    println!(
        "config: {} {} ({} bytes)",
        img.manifest.config.media_type, img.manifest.config.digest, img.manifest.config.size
    );
    for (i, l) in img.manifest.layers.iter().enumerate() {
        println!(
            "layer {i}: {} {} ({} bytes)",
            l.media_type, l.digest, l.size
        );
    }
    match img.istio_verdict(
        &url,
        Rules {
            max_binary_size: a.istio.max_binary_size,
        },
    ) {
        Ok(acc) => println!(
            "istio: accepted ({}); module {} bytes, sha256 {}",
            acc.variant,
            acc.wasm.len(),
            Digest::of(&acc.wasm)
        ),
        Err(r) => println!("istio: REJECTED: {r}"),
    }
    if let ImageSource::Remote(r) = &src {
        print_wasm_plugin_fields(
            &r.wasm_plugin_url(&img.manifest_digest),
            &img.manifest_digest,
        );
    }
    Ok(())
}

fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let src = ImageSource::parse(&a.image)?;
    let (img, url) = fetch(&src, &a.registry)?;
    if let Some(expected) = &a.sha256 {
        let expected = expected.trim().trim_start_matches("sha256:");
        istio::check_sha256(&url, &img.manifest_digest, expected)
            .map_err(|r| anyhow::anyhow!("REJECTED by Istio's checksum check: {r}"))?;
    }
    let accepted = img
        .istio_verdict(
            &url,
            Rules {
                max_binary_size: a.istio.max_binary_size,
            },
        )
        .map_err(|r| anyhow::anyhow!("REJECTED: Istio would not load {}: {r}", a.image))?;
    println!(
        "ACCEPTED: Istio would load {} ({} bytes) from this {}",
        tideway_oci::layer::PLUGIN_FILE_NAME,
        accepted.wasm.len(),
        accepted.variant
    );
    println!("manifest digest: {}", img.manifest_digest);
    if let ImageSource::Remote(r) = &src {
        print_wasm_plugin_fields(
            &r.wasm_plugin_url(&img.manifest_digest),
            &img.manifest_digest,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: Top,
    }
    #[derive(Debug, Subcommand)]
    enum Top {
        Image(ImageArgs),
    }

    #[test]
    fn help_teaches_the_manifest_digest_point_and_debug_hides_passwords() {
        let help = IMAGE_LONG_ABOUT;
        assert!(help.contains("MANIFEST") && help.contains("37565") && help.contains("39990"));
        let t = T::try_parse_from(["t", "image", "pull", "reg.example/f:v1", "--username", "u"])
            .unwrap();
        let Top::Image(ImageArgs {
            command: ImageCommand::Pull(mut p),
        }) = t.cmd
        else {
            panic!()
        };
        p.registry.password = Some(Secret::new("hunter2"));
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn build_writes_a_layout_that_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let wasm_path = dir.path().join("f.wasm");
        std::fs::write(&wasm_path, b"\0asm\x01\0\0\0").unwrap();
        let out = dir.path().join("layout");
        let t = T::try_parse_from([
            "t",
            "image",
            "build",
            wasm_path.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--tag",
            "v1",
        ])
        .unwrap();
        let Top::Image(args) = t.cmd;
        run(args).unwrap();
        let t = T::try_parse_from(["t", "image", "verify", &format!("oci:{}:v1", out.display())])
            .unwrap();
        let Top::Image(args) = t.cmd;
        run(args).unwrap();
        std::fs::write(&wasm_path, b"not wasm at all").unwrap();
        let t = T::try_parse_from([
            "t",
            "image",
            "build",
            wasm_path.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .unwrap();
        let Top::Image(args) = t.cmd;
        let err = format!("{:#}", run(args).unwrap_err());
        assert!(err.contains("not a WebAssembly module"), "{err}");
    }
}
