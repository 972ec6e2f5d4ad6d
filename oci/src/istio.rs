//! Istio's acceptance rules for `oci://` wasm images, mirrored.
//!
//! Source: istio/istio `pkg/wasm/imagefetcher.go` (`PrepareFetch`,
//! `extractDockerImage`, `extractOCIStandardImage`, `extractWasmPluginBinary`,
//! `extractOCIArtifactImage`), `pkg/wasm/cache.go` (`getOrFetch`,
//! `isValidWasmBinary`) and `pilot/pkg/features` (`MaxWasmBinarySizeBytes`),
//! read at istio master of 2026-08 (commit 86c9f01f). What Istio does, and
//! what [`extract`] does the same way:
//!
//! * **Manifest digest.** The value compared with a `WasmPlugin`'s `sha256:`
//!   is the digest of the image MANIFEST (`img.Digest()`), not of the wasm
//!   file. A mismatch fails with `module downloaded from <url> has checksum
//!   <actual>, which does not match: <expected>`. For an image index, the
//!   image is first resolved for platform `linux/amd64` (go-containerregistry's
//!   default; an entry without a platform counts as `linux/amd64`), and the
//!   digest is that child manifest's.
//! * **Docker image.** If the manifest's `mediaType` field is
//!   `application/vnd.docker.distribution.manifest.v2+json`, the LAST layer
//!   must be `application/vnd.docker.image.rootfs.diff.tar.gzip`
//!   (`invalid media type <mt> (expect <expected>)`; no layers: `number of
//!   layers must be greater than zero`), and no other variant is tried.
//! * **OCI "compat" image.** Otherwise the LAST layer must be
//!   `application/vnd.oci.image.layer.v1.tar+gzip`.
//! * **Both tar variants:** the layer is gunzipped (`failed to parse layer as
//!   tar.gz: …`), the tar stream is read through a limit of
//!   `ISTIO_WASM_MAX_BINARY_SIZE_BYTES` (default 256 MiB) decompressed bytes,
//!   and the FIRST entry whose base name (Go `filepath.Base`) is
//!   `plugin.wasm` is the module (`plugin.wasm not found in the archive`;
//!   cut by the limit: `failed to read plugin.wasm: unexpected EOF`).
//! * **Solo "oci" variant.** If the compat parse failed: exactly two layers
//!   (`number of layers must be 2 but got <n>`), the first of type
//!   `application/vnd.module.wasm.content.layer.v1+wasm` is the raw module
//!   (`could not find the layer of type …`), read through the same limit
//!   (silently truncated).
//! * Neither: `the given image is in invalid format as an OCI image:` with
//!   `could not parse as compat variant: …` and `could not parse as oci
//!   variant: …`. Istio prefixes binary-extraction failures with `could not
//!   fetch Wasm binary: `.
//! * **Wasm check** (`isValidWasmBinary`): at least 8 bytes starting with
//!   `\0asm`, else `fetched Wasm binary from <url> is invalid`.
//!
//! The CNCF `application/wasm` artifact fails both the compat rule (wrong
//! layer type) and the solo rule (one layer): istio/istio#39990.
//!
//! Everything here is pure: it works on a manifest and layer bytes already
//! fetched and digest-checked, so it is unit-tested without a registry.

use crate::digest::Digest;
use crate::layer::PLUGIN_FILE_NAME;
use crate::manifest::{Descriptor, ImageIndex, ImageManifest};
use crate::media_types;
use crate::wasm;
use std::io::Read;

/// Istio's default `ISTIO_WASM_MAX_BINARY_SIZE_BYTES`: 256 MiB.
pub const DEFAULT_MAX_BINARY_SIZE: u64 = 256 * 1024 * 1024;

/// The platform go-containerregistry resolves an index to when Istio fetches.
pub const ISTIO_PLATFORM: (&str, &str) = ("linux", "amd64");

/// Which of Istio's accepted layouts an image matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Docker schema-2 manifest, tar.gz layer with `plugin.wasm`.
    DockerCompat,
    /// OCI manifest, `tar+gzip` layer with `plugin.wasm` (what `tideway image build` makes).
    OciCompat,
    /// Two layers, one `application/vnd.module.wasm.content.layer.v1+wasm`.
    SoloOci,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Variant::DockerCompat => "Docker image with a tar.gz layer holding plugin.wasm",
            Variant::OciCompat => "OCI compat image with a tar+gzip layer holding plugin.wasm",
            Variant::SoloOci => {
                "two-layer image with an application/vnd.module.wasm.content.layer.v1+wasm layer"
            }
        })
    }
}

/// The module Istio would load from an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The layout matched.
    pub variant: Variant,
    /// The module bytes.
    pub wasm: Vec<u8>,
}

/// Why Istio would refuse an image: its own error text, plus our advice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The error Istio's agent would log, in Istio's wording.
    pub istio_error: String,
    /// What to do about it (ours, not Istio's).
    pub hint: Option<String>,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.istio_error)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejection {}

/// Limits applied like Istio's agent does.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// `ISTIO_WASM_MAX_BINARY_SIZE_BYTES`.
    pub max_binary_size: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            max_binary_size: DEFAULT_MAX_BINARY_SIZE,
        }
    }
}

/// Picks the index entry Istio would use: the first `linux/amd64` one (an
/// entry without `platform` counts as `linux/amd64`).
pub fn select_from_index(index: &ImageIndex) -> Result<&Descriptor, Rejection> {
    index
        .manifests
        .iter()
        .find(|d| match &d.platform {
            None => true,
            Some(p) => p.os == ISTIO_PLATFORM.0 && p.architecture == ISTIO_PLATFORM.1,
        })
        .ok_or_else(|| Rejection {
            istio_error: format!(
                "could not fetch Wasm OCI image: could not fetch image: no child with platform {}/{} in index",
                ISTIO_PLATFORM.1, ISTIO_PLATFORM.0
            ),
            hint: Some("Istio resolves an index for linux/amd64 only; push the single-image manifest instead".into()),
        })
}

/// The `sha256:` comparison Istio makes before extracting: `expected_hex` is
/// the `WasmPlugin`'s `sha256` field, `manifest_digest` the image's.
pub fn check_sha256(
    url: &str,
    manifest_digest: &Digest,
    expected_hex: &str,
) -> Result<(), Rejection> {
    if manifest_digest.hex() == expected_hex {
        return Ok(());
    }
    Err(Rejection {
        istio_error: format!(
            "module downloaded from {url} has checksum {}, which does not match: {expected_hex}",
            manifest_digest.hex()
        ),
        hint: Some(format!(
            "for oci:// URLs the sha256 field must be the image MANIFEST digest ({}), not the sha256 of the .wasm file",
            manifest_digest.hex()
        )),
    })
}

/// Applies Istio's extraction rules to an image manifest and its layers'
/// bytes (`layers[i]` belongs to `manifest.layers[i]`), then the wasm check.
/// `url` is only used in error texts, as Istio does.
pub fn extract(
    url: &str,
    manifest: &ImageManifest,
    layers: &[Vec<u8>],
    rules: Rules,
) -> Result<Accepted, Rejection> {
    let fetch_err = |e: String, hint: Option<String>| Rejection {
        istio_error: format!("could not fetch Wasm binary: {e}"),
        hint,
    };
    let accepted = if manifest.media_type.as_deref() == Some(media_types::DOCKER_MANIFEST_V2) {
        let wasm = tar_variant(manifest, layers, media_types::DOCKER_LAYER_TAR_GZIP, rules)
            .map_err(|e| {
                fetch_err(
                    format!("could not extract Wasm file from the image as Docker container {e}"),
                    None,
                )
            })?;
        Accepted {
            variant: Variant::DockerCompat,
            wasm,
        }
    } else {
        match tar_variant(manifest, layers, media_types::OCI_LAYER_TAR_GZIP, rules) {
            Ok(wasm) => Accepted {
                variant: Variant::OciCompat,
                wasm,
            },
            Err(compat) => match solo_variant(manifest, layers, rules) {
                Ok(wasm) => Accepted {
                    variant: Variant::SoloOci,
                    wasm,
                },
                Err(oci) => {
                    return Err(fetch_err(
                        format!(
                        "the given image is in invalid format as an OCI image: 2 errors occurred: \
                             * could not parse as compat variant: {compat} \
                             * could not parse as oci variant: {oci}"
                    ),
                        Some(hint_for(manifest)),
                    ))
                }
            },
        }
    };
    if !wasm::istio_accepts(&accepted.wasm) {
        return Err(Rejection {
            istio_error: format!("fetched Wasm binary from {url} is invalid"),
            hint: Some(format!(
                "the extracted {} ({} bytes) does not start with the wasm magic bytes \\0asm",
                PLUGIN_FILE_NAME,
                accepted.wasm.len()
            )),
        });
    }
    Ok(accepted)
}

fn hint_for(manifest: &ImageManifest) -> String {
    let last = manifest.layers.last().map(|l| l.media_type.as_str());
    if manifest.config.media_type == media_types::WASM_CONFIG_V0
        || last == Some(media_types::WASM_LAYER)
    {
        "this is the CNCF TAG-Runtime wasm artifact format (application/wasm layer), which Istio's fetcher does not accept (istio/istio#39990); rebuild with `tideway image build --format compat`".into()
    } else {
        format!(
            "Istio wants the last layer to be {} holding {PLUGIN_FILE_NAME}; `tideway image build` produces that",
            media_types::OCI_LAYER_TAR_GZIP
        )
    }
}

/// The compat rule: last layer of `want` type, then `plugin.wasm` from its tar.gz.
fn tar_variant(
    manifest: &ImageManifest,
    layers: &[Vec<u8>],
    want: &str,
    rules: Rules,
) -> Result<Vec<u8>, String> {
    let Some(last) = manifest.layers.last() else {
        return Err("number of layers must be greater than zero".into());
    };
    if last.media_type != want {
        return Err(format!(
            "invalid media type {} (expect {want})",
            last.media_type
        ));
    }
    let data = layers
        .get(manifest.layers.len() - 1)
        .ok_or_else(|| "could not get layer content: missing".to_string())?;
    extract_plugin_binary(data, rules.max_binary_size)
        .map_err(|e| format!("could not extract wasm binary: {e}"))
}

/// The solo "oci" rule: two layers, raw module in the wasm-content one.
fn solo_variant(
    manifest: &ImageManifest,
    layers: &[Vec<u8>],
    rules: Rules,
) -> Result<Vec<u8>, String> {
    if manifest.layers.len() != 2 {
        return Err(format!(
            "number of layers must be 2 but got {}",
            manifest.layers.len()
        ));
    }
    let index = manifest
        .layers
        .iter()
        .position(|l| l.media_type == media_types::SOLO_WASM_LAYER)
        .ok_or_else(|| {
            format!(
                "could not find the layer of type {}",
                media_types::SOLO_WASM_LAYER
            )
        })?;
    let data = layers
        .get(index)
        .ok_or_else(|| "could not get layer content: missing".to_string())?;
    let keep = data
        .len()
        .min(usize::try_from(rules.max_binary_size).unwrap_or(usize::MAX));
    Ok(data[..keep].to_vec())
}

/// Go's `filepath.Base` on a `/`-separated tar name.
fn go_base(name: &[u8]) -> &[u8] {
    if name.is_empty() {
        return b".";
    }
    let trimmed = {
        let mut end = name.len();
        while end > 0 && name[end - 1] == b'/' {
            end -= 1;
        }
        &name[..end]
    };
    if trimmed.is_empty() {
        return b"/";
    }
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// `extractWasmPluginBinary`: gunzip, read the tar through a `cap`-byte
/// limit, return the first entry whose base name is `plugin.wasm`.
pub fn extract_plugin_binary(gz: &[u8], cap: u64) -> Result<Vec<u8>, String> {
    if gz.is_empty() {
        return Err("failed to parse layer as tar.gz: EOF".into());
    }
    if gz.len() < 10 || gz[0] != 0x1f || gz[1] != 0x8b || gz[2] != 8 {
        return Err("failed to parse layer as tar.gz: gzip: invalid header".into());
    }
    let limited = flate2::read::MultiGzDecoder::new(gz).take(cap);
    let mut archive = tar::Archive::new(limited);
    let entries = archive.entries().map_err(|e| e.to_string())?;
    for entry in entries {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let is_plugin = go_base(&entry.path_bytes()) == PLUGIN_FILE_NAME.as_bytes();
        if !is_plugin {
            continue;
        }
        let size = entry.size();
        let mut out = Vec::new();
        entry
            .read_to_end(&mut out)
            .map_err(|e| format!("failed to read {PLUGIN_FILE_NAME}: {e}"))?;
        if (out.len() as u64) < size {
            return Err(format!("failed to read {PLUGIN_FILE_NAME}: unexpected EOF"));
        }
        return Ok(out);
    }
    Err(format!("{PLUGIN_FILE_NAME} not found in the archive"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{build, BuildOptions, ImageFormat};
    use crate::layer::gzip;
    use crate::manifest::{Manifest, Platform};

    const WASM: &[u8] = b"\0asm\x01\0\0\0\0\x05\x04name";

    fn manifest_of(image: &crate::image::Image) -> ImageManifest {
        match Manifest::parse(&image.manifest, None).unwrap() {
            Manifest::Image(m) => m,
            Manifest::Index(_) => panic!("index"),
        }
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn hand_manifest(
        media_type: Option<&str>,
        layers: &[(&str, &[u8])],
    ) -> (ImageManifest, Vec<Vec<u8>>) {
        let m = ImageManifest {
            schema_version: 2,
            media_type: media_type.map(str::to_string),
            artifact_type: None,
            config: Descriptor::of(media_types::OCI_CONFIG, b"{}"),
            layers: layers.iter().map(|(mt, d)| Descriptor::of(mt, d)).collect(),
            annotations: None,
        };
        (m, layers.iter().map(|(_, d)| d.to_vec()).collect())
    }

    #[test]
    fn our_compat_image_is_accepted_with_the_exact_module() {
        let image = build(WASM, &BuildOptions::default()).unwrap();
        let layers: Vec<Vec<u8>> = image.layers.iter().map(|l| l.data.clone()).collect();
        let got = extract("r/x", &manifest_of(&image), &layers, Rules::default()).unwrap();
        assert_eq!(got.variant, Variant::OciCompat);
        assert_eq!(got.wasm, WASM);
    }

    #[test]
    fn cncf_artifact_is_rejected_with_istios_reasons_and_the_issue_link() {
        let opts = BuildOptions {
            format: ImageFormat::WasmArtifact,
            ..Default::default()
        };
        let image = build(WASM, &opts).unwrap();
        let layers: Vec<Vec<u8>> = image.layers.iter().map(|l| l.data.clone()).collect();
        let r = extract("r/x", &manifest_of(&image), &layers, Rules::default()).unwrap_err();
        assert!(
            r.istio_error.starts_with(
                "could not fetch Wasm binary: the given image is in invalid format as an OCI image"
            ),
            "{r}"
        );
        assert!(r.istio_error.contains(
            "could not parse as compat variant: invalid media type application/wasm (expect application/vnd.oci.image.layer.v1.tar+gzip)"
        ), "{r}");
        assert!(
            r.istio_error
                .contains("could not parse as oci variant: number of layers must be 2 but got 1"),
            "{r}"
        );
        assert!(r.hint.as_deref().unwrap_or("").contains("39990"));
    }

    #[test]
    fn only_the_last_layer_counts_for_the_compat_rule() {
        let layer = gzip(&tar_of(&[("plugin.wasm", WASM)])).unwrap();
        let (m, l) = hand_manifest(
            None,
            &[
                (media_types::OCI_LAYER_TAR_GZIP, &layer),
                ("application/octet-stream", b"junk"),
            ],
        );
        let r = extract("u", &m, &l, Rules::default()).unwrap_err();
        assert!(
            r.istio_error
                .contains("invalid media type application/octet-stream"),
            "{r}"
        );
        let (m, l) = hand_manifest(
            None,
            &[
                ("application/octet-stream", b"junk"),
                (media_types::OCI_LAYER_TAR_GZIP, &layer),
            ],
        );
        assert_eq!(extract("u", &m, &l, Rules::default()).unwrap().wasm, WASM);
    }

    #[test]
    fn docker_manifest_needs_a_docker_layer_and_does_not_fall_back() {
        let layer = gzip(&tar_of(&[("plugin.wasm", WASM)])).unwrap();
        let (m, l) = hand_manifest(
            Some(media_types::DOCKER_MANIFEST_V2),
            &[(media_types::DOCKER_LAYER_TAR_GZIP, &layer)],
        );
        let ok = extract("u", &m, &l, Rules::default()).unwrap();
        assert_eq!(ok.variant, Variant::DockerCompat);
        // An OCI layer type in a Docker manifest: Istio does not try the OCI rule.
        let (m, l) = hand_manifest(
            Some(media_types::DOCKER_MANIFEST_V2),
            &[(media_types::OCI_LAYER_TAR_GZIP, &layer)],
        );
        let r = extract("u", &m, &l, Rules::default()).unwrap_err();
        assert_eq!(
            r.istio_error,
            "could not fetch Wasm binary: could not extract Wasm file from the image as Docker container invalid media type application/vnd.oci.image.layer.v1.tar+gzip (expect application/vnd.docker.image.rootfs.diff.tar.gzip)"
        );
        let (m, l) = hand_manifest(Some(media_types::DOCKER_MANIFEST_V2), &[]);
        assert!(extract("u", &m, &l, Rules::default())
            .unwrap_err()
            .istio_error
            .contains("number of layers must be greater than zero"));
    }

    #[test]
    fn first_entry_with_base_name_plugin_wasm_wins() {
        let other = b"\0asm\x01\0\0\0\0\x03\x02zz";
        let tar = tar_of(&[
            ("README", b"hi"),
            ("dir/plugin.wasm", WASM),
            ("plugin.wasm", other),
        ]);
        assert_eq!(
            extract_plugin_binary(&gzip(&tar).unwrap(), DEFAULT_MAX_BINARY_SIZE).unwrap(),
            WASM
        );
        let tar = tar_of(&[("plugin.wasm.bak", WASM)]);
        assert_eq!(
            extract_plugin_binary(&gzip(&tar).unwrap(), DEFAULT_MAX_BINARY_SIZE).unwrap_err(),
            "plugin.wasm not found in the archive"
        );
    }

    #[test]
    fn size_cap_cuts_the_module_like_istios_limit_reader() {
        let big = [WASM, &[0u8; 4096][..]].concat();
        let gz = gzip(&tar_of(&[("plugin.wasm", &big)])).unwrap();
        // header (512) + 4 KiB of data fit in 8 KiB, not in 2 KiB.
        assert_eq!(extract_plugin_binary(&gz, 8192).unwrap(), big);
        assert_eq!(
            extract_plugin_binary(&gz, 2048).unwrap_err(),
            "failed to read plugin.wasm: unexpected EOF"
        );
        // The solo variant truncates silently instead.
        let (m, l) = hand_manifest(
            None,
            &[(media_types::SOLO_WASM_LAYER, &big), ("x/y", b"meta")],
        );
        let got = extract(
            "u",
            &m,
            &l,
            Rules {
                max_binary_size: 100,
            },
        )
        .unwrap();
        assert_eq!((got.variant, got.wasm.len()), (Variant::SoloOci, 100));
    }

    #[test]
    fn not_gzip_and_not_wasm_are_refused_with_istios_texts() {
        assert_eq!(
            extract_plugin_binary(b"plain text, not gzip", 1 << 20).unwrap_err(),
            "failed to parse layer as tar.gz: gzip: invalid header"
        );
        let gz = gzip(&tar_of(&[("plugin.wasm", b"#!/bin/sh\n")])).unwrap();
        let (m, l) = hand_manifest(None, &[(media_types::OCI_LAYER_TAR_GZIP, &gz)]);
        let r = extract("oci://reg/x:1", &m, &l, Rules::default()).unwrap_err();
        assert_eq!(
            r.istio_error,
            "fetched Wasm binary from oci://reg/x:1 is invalid"
        );
    }

    #[test]
    fn sha256_must_be_the_manifest_digest_not_the_wasm_hash() {
        let image = build(WASM, &BuildOptions::default()).unwrap();
        let md = image.manifest_digest();
        assert!(check_sha256("u", &md, md.hex()).is_ok());
        let wasm_hash = Digest::of(WASM);
        let r = check_sha256("u", &md, wasm_hash.hex()).unwrap_err();
        assert!(r.istio_error.contains("which does not match"), "{r}");
        assert!(r.hint.unwrap().contains(md.hex()));
    }

    #[test]
    fn index_resolves_to_linux_amd64_or_an_entry_without_platform() {
        let d = |os: &str, arch: &str| Descriptor {
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: None,
            }),
            ..Descriptor::of(media_types::OCI_MANIFEST, os.as_bytes())
        };
        let index = ImageIndex {
            schema_version: 2,
            media_type: None,
            manifests: vec![d("linux", "arm64"), d("linux", "amd64")],
            annotations: None,
        };
        assert_eq!(select_from_index(&index).unwrap(), &index.manifests[1]);
        let only_arm = ImageIndex {
            manifests: vec![d("linux", "arm64")],
            ..index.clone()
        };
        assert!(select_from_index(&only_arm).is_err());
        let no_platform = ImageIndex {
            manifests: vec![Descriptor::of(media_types::OCI_MANIFEST, b"m")],
            ..index
        };
        assert!(select_from_index(&no_platform).is_ok());
    }

    #[test]
    fn go_base_matches_filepath_base() {
        assert_eq!(go_base(b"a/b/plugin.wasm"), b"plugin.wasm");
        assert_eq!(go_base(b"./plugin.wasm"), b"plugin.wasm");
        assert_eq!(go_base(b"plugin.wasm/"), b"plugin.wasm");
        assert_eq!(go_base(b""), b".");
        assert_eq!(go_base(b"///"), b"/");
    }
}
