//! Test fixtures: a real Distribution registry (Debian's `docker-registry`)
//! per test, on a free loopback port with its own temp config/storage, killed
//! on drop; a TLS certificate chain made with rcgen; htpasswd files made with
//! `htpasswd` (apache2-utils); helpers for `skopeo`.
//!
//! Missing tools make the test FAIL with an explanation, never skip.

#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod token_server;

pub const REGISTRY_BIN: &str = "docker-registry";

/// Panics with install advice unless `bin` runs.
pub fn require_tool(bin: &str, package: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{bin}` is not installed; these tests need it (Debian package `{package}`: \
         `sudo apt-get install {package}`, or run `cargo xtask setup`)"
    );
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A small valid wasm core module with `tag` in a custom section, so tests
/// can make distinct modules.
pub fn wasm_module(tag: &str) -> Vec<u8> {
    let name = b"tideway-test";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.push(0); // custom section id
    assert!(payload.len() < 128);
    m.push(payload.len() as u8);
    m.extend_from_slice(&payload);
    m
}

/// TLS material for a registry on 127.0.0.1: a CA and a server cert it signed.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca_pem: Vec<u8>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub ca_dir: PathBuf,
    /// The server certificate and its PKCS#8 key, DER (for the token server).
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

pub fn make_tls(dir: &Path) -> TlsFiles {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tideway test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("leaf params");
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("leaf cert");
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, leaf_cert.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    // skopeo's --*-cert-dir wants a directory with the CA as *.crt.
    let ca_dir = dir.join("certs.d");
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::write(ca_dir.join("ca.crt"), ca_cert.pem()).unwrap();
    TlsFiles {
        ca_pem: ca_cert.pem().into_bytes(),
        cert_path,
        key_path,
        ca_dir,
        cert_der: leaf_cert.der().to_vec(),
        key_der: leaf_key.serialize_der(),
    }
}

/// Ready = the registry logged "listening on" (so it is OUR process that
/// holds the port, not another one) and accepts connections.
fn wait_ready(child: &mut Child, addr: &str, log_path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let listening = std::fs::read_to_string(log_path)
            .map(|l| l.contains("listening on"))
            .unwrap_or(false);
        if listening && TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A running `docker-registry`, killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub tls: Option<TlsFiles>,
    log_path: PathBuf,
}

impl Registry {
    /// No auth, plain HTTP.
    pub fn plain() -> Self {
        Self::start_on(None, false, None, None)
    }

    /// htpasswd (bcrypt) basic auth over TLS with a test CA.
    pub fn tls_basic_auth(user: &str, password: &str) -> Self {
        Self::start_on(None, true, Some((user, password)), None)
    }

    /// No auth over TLS with a test CA.
    pub fn tls_open() -> Self {
        Self::start_on(None, true, None, None)
    }

    /// Token auth (`auth: token`) over TLS, trusting `server`'s signing
    /// certificate, with `server`'s TLS material (one CA for both).
    pub fn token_auth(server: &token_server::TokenServer) -> Self {
        Self::start_on(None, true, None, Some(server))
    }

    /// Plain registry on a given port (for "comes up late" tests).
    pub fn plain_on(port: u16) -> Self {
        Self::start_on(Some(port), false, None, None)
    }

    fn start_on(
        fixed_port: Option<u16>,
        tls: bool,
        auth: Option<(&str, &str)>,
        token: Option<&token_server::TokenServer>,
    ) -> Self {
        require_tool(REGISTRY_BIN, "docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = match token {
            Some(t) => Some(t.tls.clone()),
            None => tls.then(|| make_tls(dir.path())),
        };
        let mut htpasswd_path = None;
        if let Some((user, password)) = auth {
            require_tool("htpasswd", "apache2-utils");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("running htpasswd");
            assert!(
                out.status.success(),
                "htpasswd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let p = dir.path().join("htpasswd");
            std::fs::write(&p, &out.stdout).unwrap();
            htpasswd_path = Some(p);
        }
        for attempt in 0..5 {
            let port = fixed_port.unwrap_or_else(free_port);
            let addr = format!("127.0.0.1:{port}");
            let mut config = format!(
                "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: tideway-test-secret\n",
                dir.path().join("storage").display()
            );
            if let Some(t) = &tls {
                config.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    t.cert_path.display(),
                    t.key_path.display()
                ));
            }
            if let Some(t) = token {
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    t.realm(),
                    token_server::SERVICE,
                    token_server::ISSUER,
                    t.rootcertbundle.display()
                ));
            }
            if let Some(p) = &htpasswd_path {
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: tideway-test\n    path: {}\n",
                    p.display()
                ));
            }
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            let log_path = dir.path().join(format!("registry-{attempt}.log"));
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config_path)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawning docker-registry");
            if wait_ready(&mut child, &addr, &log_path, Duration::from_secs(15)) {
                return Registry {
                    child,
                    addr,
                    dir,
                    tls,
                    log_path,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            // A port taken in between by a parallel test: try another one.
            if fixed_port.is_some() || attempt == 4 {
                panic!("docker-registry did not start on {addr}; its log:\n{log}");
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The registry's log so far (stdout + stderr, includes access lines).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// How many requests with `method` whose path contains `fragment` the registry logged.
    pub fn count_requests(&self, method: &str, fragment: &str) -> usize {
        let needle = format!("\"{method} ");
        self.log()
            .lines()
            .filter(|l| l.contains(&needle) && l.contains(fragment))
            .count()
    }

    /// Filesystem path of a blob's data in the registry's storage.
    pub fn blob_data_path(&self, hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs skopeo with `args`; panics with its output on failure.
pub fn skopeo(args: &[&str]) -> String {
    require_tool("skopeo", "skopeo");
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("running skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
