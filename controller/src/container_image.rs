//! The controller's own container image: one static `tideway` program, a CA
//! bundle and a non-root user, nothing else (no shell, no package manager).

use anyhow::bail;
use tideway_oci::container::{File, RunConfig};
use tideway_oci::image::Image;

/// Where the controller image's CA bundle comes from by default: Debian's
/// `ca-certificates`, the bundle rustls' native root store reads.
pub const DEFAULT_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The controller's container image: the `tideway` program at `/tideway`, a
/// CA bundle for TLS to member API servers and registries, run as
/// 65532:65532 with `run` as its default arguments. `program` must be
/// statically linked: the image has no libraries.
pub fn controller_image(program: &[u8], ca_bundle: &[u8], version: &str) -> anyhow::Result<Image> {
    if !is_static_elf(program)? {
        bail!(
            "the program is dynamically linked (it names an ELF interpreter), and the image has no \
             libraries; build it static: `cargo xtask image` does"
        );
    }
    if !ca_bundle.starts_with(b"-----BEGIN CERTIFICATE-----") {
        bail!("the CA bundle is not PEM certificates (it must start with -----BEGIN CERTIFICATE-----)");
    }
    let mut files = tideway_oci::container::nonroot_user_files();
    files.push(File {
        path: "/tideway".to_string(),
        mode: 0o755,
        bytes: program.to_vec(),
    });
    files.push(File {
        path: DEFAULT_CA_BUNDLE.to_string(),
        mode: 0o644,
        bytes: ca_bundle.to_vec(),
    });
    let nonroot = tideway_oci::container::NONROOT;
    let run = RunConfig {
        user: format!("{nonroot}:{nonroot}"),
        entrypoint: vec!["/tideway".to_string()],
        cmd: vec!["run".to_string()],
        env: vec![format!("SSL_CERT_FILE={DEFAULT_CA_BUNDLE}")],
        labels: [
            ("org.opencontainers.image.title", "tideway"),
            ("org.opencontainers.image.version", version),
            ("org.opencontainers.image.licenses", "Apache-2.0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    };
    Ok(tideway_oci::container::build(&files, &run)?)
}

/// Whether an ELF executable runs without a dynamic loader: it has no
/// `PT_INTERP` program header. (Read here rather than with an ELF crate:
/// these are the only 20 bytes of the format the controller needs.)
pub fn is_static_elf(bytes: &[u8]) -> anyhow::Result<bool> {
    const PT_INTERP: u32 = 3;
    let field = |at: usize, len: usize| -> anyhow::Result<&[u8]> {
        bytes
            .get(at..at + len)
            .ok_or_else(|| anyhow::anyhow!("not an ELF executable: truncated at byte {at}"))
    };
    if field(0, 4)? != b"\x7fELF" || field(4, 1)? != [2] || field(5, 1)? != [1] {
        bail!("not a 64-bit little-endian ELF executable");
    }
    let u16_at = |at| -> anyhow::Result<usize> {
        Ok(u16::from_le_bytes(field(at, 2)?.try_into()?) as usize)
    };
    let phoff = u64::from_le_bytes(field(0x20, 8)?.try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36)?, u16_at(0x38)?);
    for i in 0..phnum {
        let p_type = u32::from_le_bytes(field(phoff + i * phentsize, 4)?.try_into()?);
        if p_type == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether `image` is a container image (a Linux config) rather than a
/// filter image: a push then prints the pinned reference for a Deployment,
/// not a WasmPlugin fragment.
pub fn is_container_image(image: &Image) -> bool {
    serde_json::from_slice::<serde_json::Value>(&image.config.data)
        .is_ok_and(|config| config["os"] == "linux")
}

#[cfg(test)]
mod controller_image_tests {
    use super::*;

    #[test]
    fn the_running_test_binary_is_recognised_as_static_or_not() {
        // The test binary is dynamically linked (the default glibc build).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me).unwrap());
        let err = controller_image(&me, b"-----BEGIN CERTIFICATE-----\n", "0").unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err}");
    }

    #[test]
    fn a_static_elf_makes_an_image_that_runs_it_as_nonroot() {
        // A minimal ELF64 header with one PT_LOAD program header.
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        assert!(is_static_elf(&elf).unwrap());
        let image = controller_image(&elf, b"-----BEGIN CERTIFICATE-----\n", "1.2.3").unwrap();
        assert!(is_container_image(&image));
        let config: serde_json::Value = serde_json::from_slice(&image.config.data).unwrap();
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            "1.2.3"
        );
        // The PT_LOAD becomes a PT_INTERP: dynamic.
        elf[64..68].copy_from_slice(&3u32.to_le_bytes());
        assert!(!is_static_elf(&elf).unwrap());
        assert!(is_static_elf(b"#!/bin/sh\n").is_err());
    }
}
