//! OCI image layout directories (`image-spec/image-layout.md`):
//! `oci-layout`, `index.json`, `blobs/sha256/<hex>`.
//!
//! `tideway image build` writes one; `push` and `verify` can read one (as can
//! `skopeo copy oci:DIR:TAG …`, `crane`, `oras`). Tags are the
//! `org.opencontainers.image.ref.name` annotation of an `index.json` entry.
//! Writing into an existing layout adds the image (replacing an entry with
//! the same tag), so one directory can hold several builds.

use crate::digest::Digest;
use crate::fetched::{verify_blob, FetchedImage, IntegrityError};
use crate::image::Image;
use crate::istio;
use crate::manifest::{Descriptor, ImageIndex, Manifest, ManifestError};
use crate::media_types;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Annotation holding an entry's tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Content of the `oci-layout` file's version.
pub const LAYOUT_VERSION: &str = "1.0.0";

/// Layout read/write failures; each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not an OCI layout, or a malformed one.
    #[error("{path}: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The requested tag is not in `index.json`, or no tag given and several entries exist.
    #[error("{path}: {detail}")]
    NoSuchImage {
        /// The layout directory.
        path: PathBuf,
        /// Details, including the tags available.
        detail: String,
    },
    /// A blob does not match its descriptor.
    #[error("{path}: {source}")]
    Integrity {
        /// The blob file.
        path: PathBuf,
        /// The mismatch.
        source: IntegrityError,
    },
    /// A manifest that cannot be parsed.
    #[error("{path}: {source}")]
    Manifest {
        /// The blob file.
        path: PathBuf,
        /// The parse error.
        source: ManifestError,
    },
    /// The index has no entry Istio would pick.
    #[error("{path}: {source}")]
    Platform {
        /// The layout.
        path: PathBuf,
        /// Istio's reason.
        source: istio::Rejection,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciLayoutFile {
    image_layout_version: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` via a temporary file and a rename, so a crash never
/// leaves a truncated blob under its final name.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Opens an existing layout: `oci-layout` must exist and say version 1.x.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, LayoutError> {
        let dir = dir.into();
        let marker = dir.join("oci-layout");
        let text = std::fs::read(&marker).map_err(io_err(&marker))?;
        let parsed: OciLayoutFile =
            serde_json::from_slice(&text).map_err(|e| LayoutError::Invalid {
                path: marker.clone(),
                detail: format!("not an oci-layout file: {e}"),
            })?;
        if !parsed.image_layout_version.starts_with("1.") {
            return Err(LayoutError::Invalid {
                path: marker,
                detail: format!(
                    "unsupported imageLayoutVersion `{}`",
                    parsed.image_layout_version
                ),
            });
        }
        Ok(Self { dir })
    }

    /// Creates the layout at `dir` if needed (an existing layout is reused).
    pub fn create(dir: impl Into<PathBuf>) -> Result<Self, LayoutError> {
        let dir = dir.into();
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            let body = serde_json::to_vec(&OciLayoutFile {
                image_layout_version: LAYOUT_VERSION.into(),
            })
            .map_err(|e| LayoutError::Invalid {
                path: marker.clone(),
                detail: e.to_string(),
            })?;
            write_atomic(&marker, &body)?;
        }
        Self::open(dir)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(digest.hex())
    }

    /// Stores a blob (skipped when a file with that digest already exists and verifies).
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, LayoutError> {
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        let intact = std::fs::read(&path)
            .map(|b| digest.matches(&b))
            .unwrap_or(false);
        if !intact {
            write_atomic(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Reads a blob and checks it against its descriptor.
    pub fn blob(&self, what: &str, descriptor: &Descriptor) -> Result<Vec<u8>, LayoutError> {
        let path = self.blob_path(&descriptor.digest);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        verify_blob(what, descriptor, &bytes)
            .map_err(|source| LayoutError::Integrity { path, source })?;
        Ok(bytes)
    }

    /// The parsed `index.json` (an empty index if there is none yet).
    pub fn index(&self) -> Result<ImageIndex, LayoutError> {
        let path = self.dir.join("index.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LayoutError::Invalid {
                path,
                detail: format!("not a valid image index: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(empty_index()),
            Err(source) => Err(LayoutError::Io { path, source }),
        }
    }

    /// Writes `image` (all blobs and the manifest) and records it in
    /// `index.json` under `tag` (replacing an entry with that tag).
    /// Returns the manifest descriptor.
    pub fn write_image(&self, image: &Image, tag: Option<&str>) -> Result<Descriptor, LayoutError> {
        for blob in image.blobs() {
            self.put_blob(&blob.data)?;
        }
        self.put_blob(&image.manifest)?;
        let mut desc = image.manifest_descriptor();
        if let Some(t) = tag {
            desc.annotations = Some(BTreeMap::from([(REF_NAME.to_string(), t.to_string())]));
        }
        let mut index = self.index()?;
        index.manifests.retain(|m| match tag {
            Some(t) => ref_name(m) != Some(t),
            None => !(m.digest == desc.digest && ref_name(m).is_none()),
        });
        index.manifests.push(desc.clone());
        let path = self.dir.join("index.json");
        let body = serde_json::to_vec(&index).map_err(|e| LayoutError::Invalid {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        write_atomic(&path, &body)?;
        Ok(desc)
    }

    /// Finds the manifest for `tag`; with no tag, the layout must hold exactly one.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Descriptor, LayoutError> {
        let index = self.index()?;
        let tags: Vec<&str> = index.manifests.iter().filter_map(ref_name).collect();
        let found = match tag {
            Some(t) => index.manifests.iter().find(|m| ref_name(m) == Some(t)),
            None if index.manifests.len() == 1 => index.manifests.first(),
            None => None,
        };
        found.cloned().ok_or_else(|| LayoutError::NoSuchImage {
            path: self.dir.clone(),
            detail: match tag {
                Some(t) => format!("no image tagged `{t}` (tags: {})", list(&tags)),
                None => format!(
                    "{} images in index.json; name one with a tag (tags: {})",
                    index.manifests.len(),
                    list(&tags)
                ),
            },
        })
    }

    /// Reads and verifies the image for `tag` (see [`Layout::resolve`]);
    /// an index entry is resolved the way Istio does.
    pub fn read_image(&self, tag: Option<&str>) -> Result<FetchedImage, LayoutError> {
        let mut desc = self.resolve(tag)?;
        let mut index_digest = None;
        let mut bytes = self.blob("manifest", &desc)?;
        let path = self.blob_path(&desc.digest);
        let mut parsed = Manifest::parse(&bytes, Some(&desc.media_type)).map_err(|source| {
            LayoutError::Manifest {
                path: path.clone(),
                source,
            }
        })?;
        if let Manifest::Index(index) = &parsed {
            let child = istio::select_from_index(index)
                .map_err(|source| LayoutError::Platform {
                    path: self.dir.clone(),
                    source,
                })?
                .clone();
            index_digest = Some(desc.digest.clone());
            bytes = self.blob("manifest", &child)?;
            parsed = Manifest::parse(&bytes, Some(&child.media_type)).map_err(|source| {
                LayoutError::Manifest {
                    path: self.blob_path(&child.digest),
                    source,
                }
            })?;
            desc = child;
        }
        let Manifest::Image(manifest) = parsed else {
            return Err(LayoutError::Invalid {
                path: self.blob_path(&desc.digest),
                detail: "nested image index is not supported".into(),
            });
        };
        let config = self.blob("config", &manifest.config)?;
        let layers = manifest
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| self.blob(&format!("layer {i}"), l))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FetchedImage {
            manifest_bytes: bytes,
            manifest_digest: desc.digest,
            manifest,
            index_digest,
            config,
            layers,
        })
    }
}

fn empty_index() -> ImageIndex {
    ImageIndex {
        schema_version: 2,
        media_type: Some(media_types::OCI_INDEX.to_string()),
        manifests: Vec::new(),
        annotations: None,
    }
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations.as_ref()?.get(REF_NAME).map(String::as_str)
}

fn list(tags: &[&str]) -> String {
    if tags.is_empty() {
        "none".into()
    } else {
        tags.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{build, BuildOptions};

    const WASM: &[u8] = b"\0asm\x01\0\0\0\0\x05\x04name";

    #[test]
    fn writes_the_three_parts_and_reads_back_the_same_image() {
        let dir = tempfile::tempdir().unwrap();
        let image = build(WASM, &BuildOptions::default()).unwrap();
        let layout = Layout::create(dir.path().join("out")).unwrap();
        let desc = layout.write_image(&image, Some("v1")).unwrap();
        let root = layout.dir();
        let marker: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("oci-layout")).unwrap()).unwrap();
        assert_eq!(marker["imageLayoutVersion"], "1.0.0");
        for blob in image.blobs() {
            let p = root.join("blobs/sha256").join(blob.descriptor.digest.hex());
            assert_eq!(std::fs::read(p).unwrap(), blob.data);
        }
        assert_eq!(desc.digest, image.manifest_digest());
        let back = layout.read_image(Some("v1")).unwrap();
        assert_eq!(back.manifest_bytes, image.manifest);
        assert_eq!(back.layers[0], image.layers[0].data);
        let verdict = back.istio_verdict("x", Default::default()).unwrap();
        assert_eq!(verdict.wasm, WASM);
    }

    #[test]
    fn same_wasm_twice_gives_byte_identical_layouts() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            let image = build(WASM, &BuildOptions::default()).unwrap();
            Layout::create(d)
                .unwrap()
                .write_image(&image, Some("latest"))
                .unwrap();
        }
        for f in ["oci-layout", "index.json"] {
            assert_eq!(
                std::fs::read(a.path().join(f)).unwrap(),
                std::fs::read(b.path().join(f)).unwrap()
            );
        }
    }

    #[test]
    fn retagging_replaces_and_new_tags_accumulate() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let one = build(WASM, &BuildOptions::default()).unwrap();
        let two = build(b"\0asm\x01\0\0\0", &BuildOptions::default()).unwrap();
        layout.write_image(&one, Some("v1")).unwrap();
        layout.write_image(&two, Some("v1")).unwrap();
        assert_eq!(layout.index().unwrap().manifests.len(), 1);
        assert_eq!(
            layout.resolve(Some("v1")).unwrap().digest,
            two.manifest_digest()
        );
        layout.write_image(&one, Some("v0")).unwrap();
        assert_eq!(layout.index().unwrap().manifests.len(), 2);
        let err = layout.resolve(None).unwrap_err().to_string();
        assert!(err.contains("v0") && err.contains("v1"), "{err}");
        assert!(layout
            .resolve(Some("nope"))
            .unwrap_err()
            .to_string()
            .contains("`nope`"));
    }

    #[test]
    fn a_tampered_blob_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let image = build(WASM, &BuildOptions::default()).unwrap();
        layout.write_image(&image, Some("v1")).unwrap();
        let p = dir
            .path()
            .join("blobs/sha256")
            .join(image.layers[0].descriptor.digest.hex());
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&p, bytes).unwrap();
        let err = layout.read_image(Some("v1")).unwrap_err();
        assert!(
            matches!(
                err,
                LayoutError::Integrity {
                    source: IntegrityError::Digest { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err
            .to_string()
            .contains(image.layers[0].descriptor.digest.hex()));
    }

    #[test]
    fn open_refuses_a_directory_that_is_not_a_layout() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Layout::open(dir.path()),
            Err(LayoutError::Io { .. })
        ));
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"2.0.0"}"#,
        )
        .unwrap();
        let e = Layout::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("2.0.0"), "{e}");
    }
}
