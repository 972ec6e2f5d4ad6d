//! The compat image's layer: a gzip-compressed tar holding one file, `plugin.wasm`.
//!
//! Built to be byte-for-byte reproducible, so that the same `.wasm` always
//! yields the same layer digest and therefore the same manifest digest (the
//! value a `WasmPlugin`'s `sha256:` field pins):
//! * a single ustar entry with fixed metadata: mode 0644, uid/gid 0, empty
//!   user/group names, mtime 0, regular file;
//! * a gzip header with mtime 0, no file name, and a fixed OS byte;
//! * a fixed compression level.
//!
//! The compressed bytes depend on the deflate implementation (flate2's
//! default pure-Rust backend here); a different backend could produce a
//! different, equally valid, stream — so reproducibility holds for a given
//! build of this tool, which is what CI and release pipelines need.

use flate2::{Compression, GzBuilder};
use std::io::Write;

/// The file name Istio looks for inside the layer (solo-io wasm spec, "compat" variant).
pub const PLUGIN_FILE_NAME: &str = "plugin.wasm";

/// gzip OS byte: 255 = "unknown", so the output does not depend on the build host.
const GZIP_OS_UNKNOWN: u8 = 255;

/// Errors building the layer (only I/O into memory buffers, so practically none).
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Writing the tar or gzip stream failed.
    #[error("building the plugin.wasm layer: {0}")]
    Io(#[from] std::io::Error),
}

/// The uncompressed tar archive with `plugin.wasm` as its only entry.
/// Its digest is the image config's `rootfs.diff_ids[0]`.
pub fn plugin_tar(wasm: &[u8]) -> Result<Vec<u8>, LayerError> {
    let mut header = tar::Header::new_ustar();
    header.set_path(PLUGIN_FILE_NAME)?;
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_username("")?;
    header.set_groupname("")?;
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, wasm)?;
    Ok(builder.into_inner()?)
}

/// Gzip-compresses `data` with a timestamp-free, host-independent header.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, LayerError> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNKNOWN)
        .write(Vec::new(), Compression::best());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

/// The compat layer for `wasm`: returns `(tar.gz bytes, uncompressed tar bytes)`.
pub fn compat_layer(wasm: &[u8]) -> Result<(Vec<u8>, Vec<u8>), LayerError> {
    let tar = plugin_tar(wasm)?;
    let gz = gzip(&tar)?;
    Ok((gz, tar))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const WASM: &[u8] = b"\0asm\x01\0\0\0\0\x05\x04name";

    #[test]
    fn same_input_gives_identical_bytes() {
        let a = compat_layer(WASM).unwrap();
        let b = compat_layer(WASM).unwrap();
        assert_eq!(a.0, b.0);
        assert_eq!(a.1, b.1);
        let other = compat_layer(b"\0asm\x01\0\0\0").unwrap();
        assert_ne!(a.0, other.0);
    }

    #[test]
    fn gzip_header_has_no_timestamp_and_a_fixed_os() {
        let gz = gzip(b"x").unwrap();
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8], "gzip magic + deflate");
        assert_eq!(gz[3], 0, "no FNAME/FCOMMENT/FEXTRA flags");
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "MTIME must be zero");
        assert_eq!(gz[9], GZIP_OS_UNKNOWN);
    }

    #[test]
    fn tar_has_one_entry_with_fixed_metadata() {
        let (gz, tar_bytes) = compat_layer(WASM).unwrap();
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, tar_bytes);
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        let h = entry.header().clone();
        assert_eq!(entry.path().unwrap().to_str(), Some("plugin.wasm"));
        assert_eq!(h.mode().unwrap(), 0o644);
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.username().unwrap(), Some(""));
        assert_eq!(h.entry_type(), tar::EntryType::Regular);
        let mut body = Vec::new();
        entry.read_to_end(&mut body).unwrap();
        assert_eq!(body, WASM);
        drop(entry);
        assert!(entries.next().is_none(), "exactly one entry");
    }
}
