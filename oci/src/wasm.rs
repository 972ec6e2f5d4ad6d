//! Recognising a WebAssembly module by its 8-byte header.
//!
//! Two checks with different purposes:
//! * [`validate_module`] is what `tideway image build` applies to its input:
//!   the `\0asm` magic AND binary-format version 1 (a core module). Anything
//!   else (a text file, a `.wat`, a component-model binary) is refused with
//!   the reason, before it can end up in a registry.
//! * [`istio_accepts`] mirrors Istio's own post-fetch check
//!   (`isValidWasmBinary` in `pkg/wasm/cache.go`): at least 8 bytes and the
//!   magic, version not looked at. `verify` uses it to answer what Istio would do.

/// The four magic bytes every wasm binary starts with: `\0asm`.
pub const MAGIC: [u8; 4] = *b"\0asm";
/// Binary-format version of a core module (the only kind proxy-wasm hosts load).
pub const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
/// Length of the wasm header (magic + version).
pub const HEADER_LEN: usize = 8;

/// Why some bytes are not a wasm core module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WasmError {
    /// Fewer than 8 bytes.
    #[error("not a WebAssembly module: {len} byte(s), shorter than the 8-byte wasm header")]
    TooShort {
        /// Input length.
        len: usize,
    },
    /// The magic bytes are wrong.
    #[error("not a WebAssembly module: starts with {found:02x?}, expected the magic bytes 00 61 73 6d (\"\\0asm\")")]
    BadMagic {
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// A wasm binary of another version or layer (e.g. a component).
    #[error("unsupported WebAssembly binary version {found:02x?}: expected 01 00 00 00 (a core module; components and other layers are not loadable by proxy-wasm hosts)")]
    BadVersion {
        /// The version bytes found.
        found: [u8; 4],
    },
}

/// Checks that `bytes` start like a wasm core module (magic + version 1).
pub fn validate_module(bytes: &[u8]) -> Result<(), WasmError> {
    if bytes.len() < HEADER_LEN {
        return Err(WasmError::TooShort { len: bytes.len() });
    }
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&bytes[..4]);
    if magic != MAGIC {
        return Err(WasmError::BadMagic { found: magic });
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&bytes[4..8]);
    if version != CORE_VERSION {
        return Err(WasmError::BadVersion { found: version });
    }
    Ok(())
}

/// Istio's check on a fetched binary: `len >= 8` and the magic bytes
/// (`isValidWasmBinary`, istio `pkg/wasm/cache.go`). Looser than [`validate_module`].
pub fn istio_accepts(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && bytes[..4] == MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn accepts_a_minimal_core_module() {
        assert_eq!(validate_module(MINIMAL), Ok(()));
        assert!(istio_accepts(MINIMAL));
    }

    #[test]
    fn refuses_short_input_wrong_magic_and_component_version() {
        assert_eq!(
            validate_module(b"\0asm"),
            Err(WasmError::TooShort { len: 4 })
        );
        assert!(matches!(
            validate_module(b"(module)\n"),
            Err(WasmError::BadMagic { found }) if &found == b"(mod"
        ));
        // Component-model binaries: same magic, version 0x0d, layer 1.
        let component = b"\0asm\x0d\0\x01\0";
        assert!(matches!(
            validate_module(component),
            Err(WasmError::BadVersion { .. })
        ));
        // ...which Istio's looser check would let through.
        assert!(istio_accepts(component));
        assert!(!istio_accepts(b"\0asm\x01\0\0"));
    }

    #[test]
    fn error_text_names_what_was_found() {
        let e = validate_module(b"GIF89a\0\0").unwrap_err().to_string();
        assert!(
            e.contains("47, 49, 46, 38") || e.contains("47 49 46 38"),
            "{e}"
        );
    }
}
