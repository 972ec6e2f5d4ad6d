//! A container image of one static program: the controller's image.
//!
//! One layer holds the program, a CA bundle and the `passwd`/`group` entries
//! of the user it runs as; nothing else (no shell, no package manager, no
//! libraries). Built to be reproducible like the filter's image: entries in
//! path order with fixed metadata (mtime 0, numeric owners, no user names),
//! the same gzip settings, and a config with no creation time, so the same
//! inputs give the same manifest digest.

use crate::digest::Digest;
use crate::image::{BuildError, Image};
use crate::layer::{self, LayerError};
use crate::manifest::{Descriptor, ImageManifest};
use crate::media_types;
use serde::Serialize;
use std::collections::BTreeMap;

/// A file of the image's one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Absolute path inside the image, e.g. `/tideway`.
    pub path: String,
    /// Permission bits (`0o755` for a program).
    pub mode: u32,
    /// Its contents.
    pub bytes: Vec<u8>,
}

/// What runs, and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// `uid:gid`; numeric, so that Kubernetes' `runAsNonRoot` can check it
    /// without reading `/etc/passwd`.
    pub user: String,
    /// The program and its fixed arguments.
    pub entrypoint: Vec<String>,
    /// Default arguments (replaced by a pod's `args`).
    pub cmd: Vec<String>,
    /// `KEY=value` environment entries.
    pub env: Vec<String>,
    /// Image labels (`org.opencontainers.image.*`).
    pub labels: BTreeMap<String, String>,
}

/// The uid and gid the image runs as (distroless' `nonroot`).
pub const NONROOT: u32 = 65532;

/// `/etc/passwd` and `/etc/group` naming [`NONROOT`], so tools that look a
/// user up (and logs that print one) see a name.
pub fn nonroot_user_files() -> Vec<File> {
    vec![
        File {
            path: "/etc/passwd".to_string(),
            mode: 0o644,
            bytes: format!("nonroot:x:{NONROOT}:{NONROOT}:nonroot:/:/sbin/nologin\n").into_bytes(),
        },
        File {
            path: "/etc/group".to_string(),
            mode: 0o644,
            bytes: format!("nonroot:x:{NONROOT}:\n").into_bytes(),
        },
    ]
}

/// Builds the image for linux/amd64.
pub fn build(files: &[File], run: &RunConfig) -> Result<Image, BuildError> {
    let tar = layer_tar(files)?;
    let gz = layer::gzip(&tar)?;
    let config = ImageConfig {
        architecture: "amd64",
        os: "linux",
        config: ContainerConfig {
            user: &run.user,
            entrypoint: &run.entrypoint,
            cmd: &run.cmd,
            env: &run.env,
            labels: &run.labels,
            working_dir: "/",
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: vec![Digest::of(&tar)],
        },
    };
    let config = serde_json::to_vec(&config).map_err(|source| BuildError::Json {
        what: "container image config",
        source,
    })?;
    let config = crate::image::Blob {
        descriptor: Descriptor::of(media_types::OCI_CONFIG, &config),
        data: config,
    };
    let layer = crate::image::Blob {
        descriptor: Descriptor::of(media_types::OCI_LAYER_TAR_GZIP, &gz),
        data: gz,
    };
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(media_types::OCI_MANIFEST.to_string()),
        artifact_type: None,
        config: config.descriptor.clone(),
        layers: vec![layer.descriptor.clone()],
        annotations: None,
    };
    let manifest = serde_json::to_vec(&manifest).map_err(|source| BuildError::Json {
        what: "image manifest",
        source,
    })?;
    Ok(Image {
        manifest,
        manifest_media_type: media_types::OCI_MANIFEST.to_string(),
        config,
        layers: vec![layer],
    })
}

/// The layer's tar: every parent directory once (0755), then the files, in
/// path order whatever order they were given in.
fn layer_tar(files: &[File]) -> Result<Vec<u8>, LayerError> {
    let mut files: Vec<&File> = files.iter().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut dirs = std::collections::BTreeSet::new();
    for f in &files {
        let mut parent = std::path::Path::new(f.path.trim_start_matches('/')).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(format!("{}/", dir.display()));
            parent = dir.parent();
        }
    }
    let mut builder = tar::Builder::new(Vec::new());
    for dir in &dirs {
        let header = header(dir, 0, 0o755, tar::EntryType::Directory)?;
        builder.append(&header, std::io::empty())?;
    }
    for f in files {
        let path = f.path.trim_start_matches('/');
        let header = header(path, f.bytes.len() as u64, f.mode, tar::EntryType::Regular)?;
        builder.append(&header, f.bytes.as_slice())?;
    }
    Ok(builder.into_inner()?)
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> std::io::Result<tar::Header> {
    // GNU headers carry paths longer than ustar's 100 bytes; ours are short,
    // and ustar keeps the archive readable by every tool.
    let mut header = tar::Header::new_ustar();
    header.set_path(path)?;
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(kind);
    header.set_username("")?;
    header.set_groupname("")?;
    header.set_cksum();
    Ok(header)
}

/// The OCI image config (image-spec `config.md`); only the fields a runtime
/// reads. No `created` or `history`: they would change the digest of every
/// build.
#[derive(Serialize)]
struct ImageConfig<'a> {
    architecture: &'a str,
    os: &'a str,
    config: ContainerConfig<'a>,
    rootfs: RootFs,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig<'a> {
    user: &'a str,
    entrypoint: &'a [String],
    cmd: &'a [String],
    env: &'a [String],
    labels: &'a BTreeMap<String, String>,
    working_dir: &'a str,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<Digest>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn run() -> RunConfig {
        RunConfig {
            user: format!("{NONROOT}:{NONROOT}"),
            entrypoint: vec!["/tideway".to_string()],
            cmd: vec!["run".to_string()],
            env: vec!["SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".to_string()],
            labels: BTreeMap::new(),
        }
    }

    fn files() -> Vec<File> {
        let mut files = nonroot_user_files();
        files.push(File {
            path: "/tideway".to_string(),
            mode: 0o755,
            bytes: b"\x7fELF program".to_vec(),
        });
        files.push(File {
            path: "/etc/ssl/certs/ca-certificates.crt".to_string(),
            mode: 0o644,
            bytes: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
        });
        files
    }

    #[test]
    fn the_same_inputs_in_any_order_give_the_same_digest() {
        let a = build(&files(), &run()).unwrap();
        let mut reversed = files();
        reversed.reverse();
        let b = build(&reversed, &run()).unwrap();
        assert_eq!(a.manifest_digest(), b.manifest_digest());
        let mut changed = files();
        changed[2].bytes.push(b'!');
        assert_ne!(
            a.manifest_digest(),
            build(&changed, &run()).unwrap().manifest_digest()
        );
    }

    #[test]
    fn the_layer_holds_exactly_the_files_and_their_directories() {
        let image = build(&files(), &run()).unwrap();
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(image.layers[0].data.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, u32, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("etc/".to_string(), 0o755, 0),
                ("etc/ssl/".to_string(), 0o755, 0),
                ("etc/ssl/certs/".to_string(), 0o755, 0),
                ("etc/group".to_string(), 0o644, 0),
                ("etc/passwd".to_string(), 0o644, 0),
                ("etc/ssl/certs/ca-certificates.crt".to_string(), 0o644, 0),
                ("tideway".to_string(), 0o755, 0),
            ]
        );
    }

    #[test]
    fn the_config_says_who_runs_what() {
        let image = build(&files(), &run()).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&image.config.data).unwrap();
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["config"]["Entrypoint"][0], "/tideway");
        assert_eq!(config["config"]["Cmd"][0], "run");
        assert!(config.get("created").is_none());
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(image.layers[0].data.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            Digest::of(&tar).to_string()
        );
    }
}
