//! The kube tier's fixture: one etcd and real `kube-apiserver`s on loopback
//! (a hub and members), each with token authentication, RBAC authorization,
//! service-account signing keys and a serving certificate for
//! `IP:127.0.0.1`; Tideway's CRDs and Istio 1.30's installed; the
//! controller's identities bound to the RBAC in `manifests/` (so a
//! permission the code needs and the manifests lack fails a test).
//!
//! The binaries come from `cargo xtask setup` (`TIDEWAY_KUBE_APISERVER`,
//! `TIDEWAY_ETCD`, else the xtask's cache path and `/usr/bin/etcd`). A
//! missing binary FAILS the test with what to run; it never skips.
//! Processes are killed on drop; ports are taken free from the kernel.

#![allow(dead_code)]

use base64::Engine;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::core::GroupVersionKind;
use kube::Client;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KUBE_VERSION: &str = "1.20.2";
/// The admin's bearer token (group system:masters) in every server's token
/// file: the test's own setup and its "other managers".
pub const ADMIN_TOKEN: &str = "tideway-test-admin-token";
/// Namespaces the test policies use, created in every member.
pub const MEMBER_NAMESPACES: &[&str] = &["production", "frontend", "monitoring", "istio-system"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("controller/ has a parent")
        .to_path_buf()
}

fn apiserver_binary() -> PathBuf {
    let path = std::env::var_os("TIDEWAY_KUBE_APISERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("TIDEWAY_KUBE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/cache/tideway"));
            cache.join(format!("kube-apiserver-{KUBE_VERSION}"))
        });
    assert!(
        path.exists(),
        "kube-apiserver {KUBE_VERSION} not found at {} — run `cargo xtask setup` (it builds it \
         from Debian's kubernetes source package, once) or set TIDEWAY_KUBE_APISERVER",
        path.display()
    );
    path
}

fn etcd_binary() -> PathBuf {
    let path = std::env::var_os("TIDEWAY_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    assert!(
        path.exists(),
        "etcd not found at {} — run `cargo xtask setup` (Debian package etcd-server)",
        path.display()
    );
    path
}

/// The user the controller's member token authenticates as.
pub const MEMBER_USER: &str = "system:serviceaccount:tideway-system:tideway-member";

/// Audit every request (metadata only: who, what, when, answer).
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
";

/// The verbs that change something.
const WRITE_VERBS: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

/// One request, as the API server's audit log has it.
#[derive(Debug, Clone)]
pub struct Request {
    pub user: String,
    pub verb: String,
    /// `resource namespace/name` (`subresource` appended when there is one).
    pub object: String,
    pub code: u16,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process killed (and reaped) on drop.
struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
        Self {
            child: Some(child),
            log,
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Etcd {
    process: Process,
    url: String,
}

impl Etcd {
    fn start(dir: &Path) -> Self {
        let client = free_port();
        let peer = free_port();
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut process = Process::spawn(
            Command::new(etcd_binary())
                .arg("--name=tideway-test")
                .arg(format!("--data-dir={}", dir.join("etcd").display()))
                .arg(format!("--listen-client-urls={url}"))
                .arg(format!("--advertise-client-urls={url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=tideway-test={peer_url}"))
                .arg("--log-level=warn"),
            dir.join("etcd.log"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = process.exited() {
                panic!("etcd exited ({status}):\n{}", process.log_tail());
            }
            if std::net::TcpStream::connect(("127.0.0.1", client)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not listening after 30 s:\n{}",
                process.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { process, url }
    }
}

/// One running `kube-apiserver`.
pub struct ApiServer {
    pub name: String,
    pub port: u16,
    pub url: String,
    pub ca_pem: String,
    process: Process,
    /// The token the controller uses here (bound to manifests/ RBAC), once
    /// [`ApiServer::bind_member_rbac`] or [`ApiServer::bind_controller_rbac`] ran.
    pub controller_token: Option<String>,
    /// Its command line and directory, for [`ApiServer::restart`].
    args: Vec<String>,
    dir: PathBuf,
    starts: u32,
}

/// The serving certificate (signed by a CA of the test's own) and the
/// service-account signing key.
struct Keys {
    ca_pem: String,
    cert_path: PathBuf,
    key_path: PathBuf,
    sa_key_path: PathBuf,
    sa_pub_path: PathBuf,
}

fn make_keys(dir: &Path) -> Keys {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tideway kube-tier CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf_key = KeyPair::generate().expect("serving key");
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("serving params");
    leaf.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("serving cert");
    let cert_path = dir.join("apiserver.crt");
    let key_path = dir.join("apiserver.key");
    std::fs::write(&cert_path, leaf_cert.pem()).expect("write cert");
    std::fs::write(&key_path, leaf_key.serialize_pem()).expect("write key");
    // ES256 service-account tokens: the server signs with the PKCS#8
    // private key and verifies with the public one (1.20 reads no public
    // key out of a PKCS#8 file).
    let sa_key = KeyPair::generate().expect("service-account key");
    let sa_key_path = dir.join("sa.key");
    let sa_pub_path = dir.join("sa.pub");
    std::fs::write(&sa_key_path, sa_key.serialize_pem()).expect("write sa key");
    std::fs::write(&sa_pub_path, sa_key.public_key_pem()).expect("write sa public key");
    Keys {
        ca_pem: ca_cert.pem(),
        cert_path,
        key_path,
        sa_key_path,
        sa_pub_path,
    }
}

impl ApiServer {
    fn start(name: &str, etcd: &Etcd, root: &Path) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("server dir");
        let keys = make_keys(&dir);
        let tokens = dir.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!("{ADMIN_TOKEN},tideway-test-admin,uid-admin,\"system:masters\"\n"),
        )
        .expect("token file");
        // Every write request, with who made it: what a test or the fleet
        // benchmark counts the controller's writes to a member from (the
        // API server's own record, not the controller's counters).
        let audit_policy = dir.join("audit-policy.yaml");
        std::fs::write(&audit_policy, AUDIT_POLICY).expect("audit policy");
        let port = free_port();
        let args: Vec<String> = vec![
            format!("--audit-policy-file={}", audit_policy.display()),
            format!("--audit-log-path={}", dir.join("audit.log").display()),
            format!("--etcd-servers={}", etcd.url),
            format!("--etcd-prefix=/{name}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            "--insecure-port=0".into(),
            format!("--cert-dir={}", dir.display()),
            format!("--tls-cert-file={}", keys.cert_path.display()),
            format!("--tls-private-key-file={}", keys.key_path.display()),
            format!("--token-auth-file={}", tokens.display()),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-key-file={}", keys.sa_pub_path.display()),
            format!(
                "--service-account-signing-key-file={}",
                keys.sa_key_path.display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
            "--logtostderr=true".into(),
            "--v=0".into(),
        ];
        let process = Process::spawn(
            Command::new(apiserver_binary()).args(&args),
            dir.join("apiserver.log"),
        );
        Self {
            name: name.to_string(),
            port,
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: keys.ca_pem,
            process,
            controller_token: None,
            args,
            dir,
            starts: 1,
        }
    }

    fn kubeconfig_for(&self, token: &str) -> Kubeconfig {
        Kubeconfig::from_yaml(&self.kubeconfig_yaml_for(token)).expect("kubeconfig")
    }

    /// A kubeconfig (as YAML) that reaches this server as the cluster admin.
    pub fn admin_kubeconfig_yaml(&self) -> String {
        self.kubeconfig_yaml_for(ADMIN_TOKEN)
    }

    fn kubeconfig_yaml_for(&self, token: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {n}\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\n\
             users:\n- name: {n}\n  user:\n    token: {token}\ncontexts:\n- name: {n}\n  context:\n    cluster: {n}\n    user: {n}\n\
             current-context: {n}\n",
            n = self.name,
            url = self.url,
        )
    }

    async fn client_with(&self, token: &str) -> Client {
        tideway_controller::apply::connect::client_for_context(
            &self.kubeconfig_for(token),
            &self.name,
        )
        .await
        .expect("client")
    }

    /// A client as the cluster admin (system:masters).
    pub async fn admin(&self) -> Client {
        self.client_with(ADMIN_TOKEN).await
    }

    /// A client with the controller's token (manifests/ RBAC only).
    pub async fn controller(&self) -> Client {
        let token = self
            .controller_token
            .as_deref()
            .expect("controller RBAC bound");
        self.client_with(token).await
    }

    /// The kubeconfig (as YAML) that reaches this server with the
    /// controller's token: what a Fleet member's Secret holds.
    pub fn controller_kubeconfig_yaml(&self) -> String {
        let token = self
            .controller_token
            .as_deref()
            .expect("controller RBAC bound");
        yaml_serde::to_string(&self.kubeconfig_for(token)).expect("kubeconfig yaml")
    }

    async fn wait_ready(&mut self) {
        let mut client = self.admin().await;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.process.exited() {
                // The port `free_port` found was taken before the server
                // bound it (loopback traffic of the tests running beside
                // this one): a first start moves to another port. A
                // restart keeps its port: its URL is what clients hold.
                let text = std::fs::read_to_string(&self.process.log).unwrap_or_default();
                if self.starts == 1
                    && text.contains("address already in use")
                    && Instant::now() < deadline
                {
                    self.move_to(free_port());
                    client = self.admin().await;
                    continue;
                }
                panic!(
                    "kube-apiserver {} exited ({status}):\n{}",
                    self.name,
                    self.process.log_tail()
                );
            }
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            if let Ok(text) = client.request_text(request).await {
                if text.trim() == "ok" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver {} not ready after 90 s:\n{}",
                self.name,
                self.process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Start again on `port` (the first start found its port taken).
    fn move_to(&mut self, port: u16) {
        for arg in &mut self.args {
            if arg.starts_with("--secure-port=") {
                *arg = format!("--secure-port={port}");
            }
        }
        self.port = port;
        self.url = format!("https://127.0.0.1:{port}");
        let log = self.dir.join(format!("apiserver-port-{port}.log"));
        self.process = Process::spawn(Command::new(apiserver_binary()).args(&self.args), log);
    }

    /// Stop the server (a member that goes away); its URL stays, so a client
    /// made before now gets connection refused.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Stop the server and start it again on the same port with the same
    /// keys, tokens and etcd (its data stays): an API server restart, as
    /// an upgrade or a crash makes one. Returns once it is ready.
    pub async fn restart(&mut self) {
        self.process.kill();
        self.starts += 1;
        let log = self.dir.join(format!("apiserver-{}.log", self.starts));
        self.process = Process::spawn(Command::new(apiserver_binary()).args(&self.args), log);
        self.wait_ready().await;
    }

    /// Every write request the server has answered so far (the audit log;
    /// across restarts, which append to it).
    pub fn writes(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|w| WRITE_VERBS.contains(&w.verb.as_str()))
            .collect()
    }

    /// The requests the controller's member identity made here (reads,
    /// lists and watches too).
    pub fn controller_requests(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|w| w.user == MEMBER_USER)
            .collect()
    }

    /// Every request the server has answered so far.
    pub fn requests(&self) -> Vec<Request> {
        let text = std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|e| e["stage"] == "ResponseComplete")
            .map(|e| {
                let o = &e["objectRef"];
                let mut object = format!(
                    "{} {}/{}",
                    o["resource"].as_str().unwrap_or_default(),
                    o["namespace"].as_str().unwrap_or_default(),
                    o["name"].as_str().unwrap_or_default()
                );
                if let Some(sub) = o["subresource"].as_str() {
                    object.push_str(&format!(" ({sub})"));
                }
                Request {
                    user: e["user"]["username"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    verb: e["verb"].as_str().unwrap_or_default().to_string(),
                    object,
                    code: e["responseStatus"]["code"].as_u64().unwrap_or_default() as u16,
                }
            })
            .collect()
    }

    /// The writes the controller's member identity made here.
    pub fn controller_writes(&self) -> Vec<Request> {
        self.writes()
            .into_iter()
            .filter(|w| w.user == MEMBER_USER)
            .collect()
    }

    /// The server's log so far (for assertion messages).
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Create every CRD in a multi-document YAML file (plain create: 1.20
    /// drops `x-kubernetes-validations` silently) and wait until they are
    /// established.
    pub async fn install_crds(&self, path: &Path) {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("CRDs at {}: {e}", path.display()));
        let crds: Api<CustomResourceDefinition> = Api::all(self.admin().await);
        let mut names = Vec::new();
        for document in yaml_serde::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document).expect("CRD YAML");
            if value.is_null() || value["kind"] != "CustomResourceDefinition" {
                continue;
            }
            let crd: CustomResourceDefinition =
                serde_json::from_value(value).expect("a CustomResourceDefinition");
            let name = crd.metadata.name.clone().unwrap_or_default();
            crds.create(&PostParams::default(), &crd)
                .await
                .unwrap_or_else(|e| panic!("creating CRD {name} in {}: {e}", self.name));
            names.push(name);
        }
        for name in names {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let crd = crds.get(&name).await.expect("CRD read back");
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "CRD {name} not established in 30 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Apply every object of a manifest file as the admin.
    pub async fn apply_manifest(&self, path: &Path) {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("manifest {}: {e}", path.display()));
        let client = self.admin().await;
        for document in yaml_serde::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document).expect("manifest YAML");
            if value.is_null() {
                continue;
            }
            self.apply_as(&client, "tideway-test-setup", &value).await;
        }
    }

    /// Server-side apply of one object with `client` as `manager`, forced
    /// (this is the test playing another tool or a human).
    pub async fn apply_as(&self, client: &Client, manager: &str, object: &Value) -> DynamicObject {
        let api = dynamic_api(client, object).await;
        let name = object["metadata"]["name"].as_str().expect("name");
        api.patch(
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(object),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {name} in {}: {e}", self.name))
    }

    pub async fn create_namespace(&self, client: &Client, name: &str) {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("namespace {name} in {}: {e}", self.name),
        }
    }

    /// A token for ServiceAccount `namespace/name` (TokenRequest API: no
    /// controller-manager runs to make token Secrets).
    async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin().await, namespace);
        let request: TokenRequest = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 7200}
        }))
        .expect("TokenRequest");
        let answer: TokenRequest = accounts
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("token for {namespace}/{name} in {}: {e}", self.name));
        answer
            .status
            .and_then(|s| s.token)
            .expect("TokenRequest answered with a token")
    }

    /// manifests/member/rbac.yaml, and the `tideway-member` token.
    pub async fn bind_member_rbac(&mut self) {
        let admin = self.admin().await;
        for ns in MEMBER_NAMESPACES {
            self.create_namespace(&admin, ns).await;
        }
        self.apply_manifest(&workspace_root().join("manifests/member/rbac.yaml"))
            .await;
        self.controller_token = Some(
            self.service_account_token("tideway-system", "tideway-member")
                .await,
        );
    }

    /// manifests/controller/ (namespace, ServiceAccount, RBAC), and the
    /// `tideway-controller` token.
    pub async fn bind_controller_rbac(&mut self) {
        let dir = workspace_root().join("manifests/controller");
        self.apply_manifest(&dir.join("namespace.yaml")).await;
        self.apply_manifest(&dir.join("serviceaccount.yaml")).await;
        self.apply_manifest(&dir.join("rbac.yaml")).await;
        self.controller_token = Some(
            self.service_account_token("tideway-system", "tideway-controller")
                .await,
        );
    }
}

/// An `Api<DynamicObject>` for `object`'s kind (discovered on the server).
pub async fn dynamic_api(client: &Client, object: &Value) -> Api<DynamicObject> {
    let api_version = object["apiVersion"].as_str().expect("apiVersion");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().expect("kind");
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("discovering {api_version} {kind}: {e}"));
    match (caps.scope, object["metadata"]["namespace"].as_str()) {
        (kube::discovery::Scope::Namespaced, Some(ns)) => {
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        _ => Api::all_with(client.clone(), &resource),
    }
}

/// Make `client`'s WasmPlugin CRD refuse `spec.priority` over 5 (as a
/// stricter admission policy would), and return once the API server
/// enforces it: a dry-run create with priority 10 is refused. The CRD
/// handler reloads a changed schema asynchronously; a fixed pause raced it.
pub async fn refuse_wasmplugin_priority_over_5(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "wasmplugins.extensions.istio.io";
    let crd = crds.get(name).await.expect("WasmPlugin CRD");
    let mut value = serde_json::to_value(&crd).expect("crd json");
    for version in value["spec"]["versions"].as_array_mut().expect("versions") {
        version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["priority"]
            ["maximum"] = json!(5);
    }
    let crd: CustomResourceDefinition = serde_json::from_value(value).expect("crd");
    crds.replace(name, &PostParams::default(), &crd)
        .await
        .expect("stricter CRD");
    let probe = json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "schema-probe", "namespace": "default"},
        "spec": {"url": "oci://registry.example.com/probe:1", "priority": 10},
    });
    let api = dynamic_api(client, &probe).await;
    let object: DynamicObject = serde_json::from_value(probe).expect("probe");
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.create(&dry_run, &object).await {
            Err(kube::Error::Api(s)) if s.code == 422 => return,
            other => assert!(
                Instant::now() < deadline,
                "the stricter WasmPlugin schema is not enforced after 30 s: {:?}",
                other.map(|_| "accepted")
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// etcd, a hub and members, all ready, with CRDs and RBAC in place.
pub struct KubeFleet {
    pub hub: ApiServer,
    pub members: Vec<ApiServer>,
    etcd: Etcd,
    pub dir: tempfile::TempDir,
}

impl KubeFleet {
    /// Start a hub and one API server per name in `members`.
    pub async fn start(members: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = Etcd::start(dir.path());
        let mut hub = ApiServer::start("hub", &etcd, dir.path());
        let mut servers: Vec<ApiServer> = members
            .iter()
            .map(|m| ApiServer::start(m, &etcd, dir.path()))
            .collect();
        hub.wait_ready().await;
        for server in &mut servers {
            server.wait_ready().await;
        }
        let istio = istio_crds();
        let tideway_crds = workspace_root().join("manifests/crds");
        for file in [
            "fleets.traffic.tideway.dev.yaml",
            "trafficpolicies.traffic.tideway.dev.yaml",
        ] {
            hub.install_crds(&tideway_crds.join(file)).await;
        }
        hub.bind_controller_rbac().await;
        for server in &mut servers {
            server.install_crds(&istio).await;
            server.bind_member_rbac().await;
        }
        Self {
            hub,
            members: servers,
            etcd,
            dir,
        }
    }

    pub fn member(&self, name: &str) -> &ApiServer {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    pub fn member_mut(&mut self, name: &str) -> &mut ApiServer {
        self.members
            .iter_mut()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// A kubeconfig file with one context per member (named like it), each
    /// with the member's controller token, plus `hub` with the
    /// controller's hub token: what `tideway apply --kubeconfig` reads.
    pub fn write_kubeconfig(&self) -> PathBuf {
        let mut clusters = Vec::new();
        let mut users = Vec::new();
        let mut contexts = Vec::new();
        for server in std::iter::once(&self.hub).chain(&self.members) {
            let ca = base64::engine::general_purpose::STANDARD.encode(&server.ca_pem);
            let token = server.controller_token.clone().expect("controller token");
            clusters.push(json!({"name": server.name, "cluster": {"server": server.url, "certificate-authority-data": ca}}));
            users.push(json!({"name": server.name, "user": {"token": token}}));
            contexts.push(json!({"name": server.name, "context": {"cluster": server.name, "user": server.name}}));
        }
        let config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": clusters, "users": users, "contexts": contexts,
            "current-context": "hub",
        });
        let path = self.dir.path().join("kubeconfig");
        std::fs::write(&path, yaml_serde::to_string(&config).expect("yaml")).expect("kubeconfig");
        path
    }
}

/// Istio 1.30's CRDs from the project's shared/ (beside the clone, or
/// `$TIDEWAY_SHARED`), as crd-validate finds them.
pub fn istio_crds() -> PathBuf {
    let path = tideway_crd_validate::shared_dir().join("istio/crd-all.gen.yaml");
    assert!(path.exists(), "Istio CRDs not found at {}", path.display());
    path
}
