//! `tideway run` against real API servers (the kube tier): the controller
//! binary itself, two replicas, against a hub and three member
//! `kube-apiserver`s, with the controller's tokens bound to the RBAC in
//! `manifests/` (a permission the daemon needs and the manifests lack fails
//! here). Every member is reached through a kubeconfig Secret in the hub,
//! as in a real installation.

mod kube_fixture;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube_fixture::{dynamic_api, free_port, KubeFleet};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tideway_controller::api::{Condition, TrafficPolicy};

const MEMBERS: &[&str] = &["cluster-hangzhou", "cluster-shanghai", "cluster-beijing"];
const IMAGE: &str = "registry.example.com/tideway/filter@sha256:d9b3ffabde57d6c94660e7ae683aa14bda1f5820614b9f6d4f8ccc0b2684f01e";

fn fleet_object() -> Value {
    let member = |name: &str, region: &str, zone: &str, wave: u32| {
        json!({"name": name, "region": region, "zone": zone, "wave": wave,
               "api": {"secretRef": {"namespace": "tideway-system", "name": format!("{name}-kubeconfig")}}})
    };
    json!({
        "apiVersion": "traffic.tideway.dev/v1alpha1",
        "kind": "Fleet",
        "metadata": {"name": "kube-tier"},
        "spec": {"clusters": [
            member("cluster-hangzhou", "east-china", "hangzhou-a", 0),
            member("cluster-shanghai", "east-china", "shanghai-a", 1),
            member("cluster-beijing", "north-china", "beijing-a", 1),
        ]}
    })
}

/// The policy with hangzhou's weight `hangzhou` (what the edits change)
/// and the first destination's cluster `first`.
fn policy_object(hangzhou: u32, first: &str) -> Value {
    json!({
        "apiVersion": "traffic.tideway.dev/v1alpha1",
        "kind": "TrafficPolicy",
        "metadata": {"name": "reviews", "namespace": "production"},
        "spec": {
            "fleet": "kube-tier",
            "service": {"name": "reviews", "port": 9080},
            "destinations": [
                {"cluster": first, "weight": hangzhou},
                {"cluster": "cluster-shanghai", "weight": 30},
                {"cluster": "cluster-beijing", "weight": 20},
            ],
            "callers": [{"namespace": "production"}],
            "observability": {"prometheusRule": false, "dashboard": false},
            "plugin": {"image": IMAGE},
        }
    })
}

/// The fleet; a hub Secret per member with its kubeconfig (controller
/// token); the Fleet and the policy created in the hub as the admin.
async fn start() -> KubeFleet {
    let kube = KubeFleet::start(MEMBERS).await;
    let secrets: Api<Secret> = Api::namespaced(kube.hub.admin().await, "tideway-system");
    for member in MEMBERS {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("{member}-kubeconfig")},
            "stringData": {"kubeconfig": kube.member(member).controller_kubeconfig_yaml()},
        }))
        .expect("secret");
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("hub Secret");
    }
    for member in MEMBERS {
        set_endpoints(&kube, member, 2).await;
    }
    let admin = kube.hub.admin().await;
    kube.hub.create_namespace(&admin, "production").await;
    kube.hub
        .apply_as(&admin, "platform-team", &fleet_object())
        .await;
    kube.hub
        .apply_as(
            &admin,
            "platform-team",
            &policy_object(50, "cluster-hangzhou"),
        )
        .await;
    kube
}

/// The reviews Service in `member` and its Endpoints with `ready` ready
/// addresses and one that is not ready (nothing runs the endpoints
/// controller here: the test writes them, as the member's would).
async fn set_endpoints(kube: &KubeFleet, member: &str, ready: usize) {
    let server = kube.member(member);
    let admin = server.admin().await;
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "reviews", "namespace": "production"},
        "spec": {"ports": [{"name": "http", "port": 9080, "protocol": "TCP"}], "selector": {"app": "reviews"}}});
    server
        .apply_as(&admin, "endpoints-controller", &service)
        .await;
    let addresses: Vec<Value> = (0..ready)
        .map(|i| json!({"ip": format!("10.0.0.{}", i + 1)}))
        .collect();
    let mut subset = json!({"notReadyAddresses": [{"ip": "10.0.1.1"}], "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}]});
    if !addresses.is_empty() {
        subset["addresses"] = json!(addresses);
    }
    let endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "reviews", "namespace": "production"},
        "subsets": [subset]});
    server
        .apply_as(&admin, "endpoints-controller", &endpoints)
        .await;
}

fn destinations_of(plugin: &Value) -> Vec<String> {
    plugin["spec"]["pluginConfig"]["services"][0]["destinations"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .filter_map(|d| d["cluster"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every member's WasmPlugin lists exactly `expected` destinations.
async fn wait_destinations(kube: &KubeFleet, expected: &[&str], log: &dyn Fn() -> String) {
    wait_for(
        "the destinations in every member",
        Duration::from_secs(30),
        || async {
            for member in MEMBERS {
                let found = plugin(kube, member)
                    .await
                    .map(|p| destinations_of(&p))
                    .unwrap_or_default();
                if found != expected {
                    return Err(format!("{member}: {found:?}\n{}", log()));
                }
            }
            Ok(())
        },
    )
    .await;
}

/// One `tideway run` replica (the binary), killed on drop.
struct Replica {
    port: u16,
    /// The weights API (`--weights-listen`).
    weights_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Replica {
    fn start(kube: &KubeFleet, identity: &str) -> Self {
        Self::start_with_lease(kube, identity, "4s", "1s")
    }

    /// A replica with its own Lease term and renew interval.
    fn start_with_lease(kube: &KubeFleet, identity: &str, duration: &str, renew: &str) -> Self {
        Self::start_with(kube, identity, duration, renew, "1h")
    }

    /// A replica with its own Lease term, renew interval and resync.
    fn start_with(
        kube: &KubeFleet,
        identity: &str,
        duration: &str,
        renew: &str,
        resync: &str,
    ) -> Self {
        let kubeconfig = kube.write_kubeconfig();
        let port = free_port();
        let weights_port = free_port();
        let log = kube.dir.path().join(format!("{identity}.log"));
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_tideway"))
            .arg("run")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--context", "hub", "--identity", identity])
            .args(["--lease-duration", duration, "--renew-interval", renew])
            .args(["--retry-interval", "300ms", "--resync", resync])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--weights-listen")
            .arg(format!("127.0.0.1:{weights_port}"))
            .arg("--ui")
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start tideway run");
        Self {
            port,
            weights_port,
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the replica stops without releasing anything.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Is `cluster` drained for reviews in the weights API's document?
    async fn weights_drained(&self, cluster: &str) -> Result<bool, String> {
        let url = format!("http://127.0.0.1:{}/v1/weights", self.weights_port);
        let body = reqwest::get(url).await.map_err(|e| e.to_string())?;
        let doc: Value = body.json().await.map_err(|e| e.to_string())?;
        doc["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "reviews"))
            .and_then(|s| s["destinations"].as_array())
            .and_then(|ds| ds.iter().find(|d| d["name"] == cluster))
            .map(|d| d["drained"].as_bool().unwrap_or(false))
            .ok_or_else(|| format!("no reviews/{cluster} in {doc}"))
    }

    async fn get(&self, path: &str) -> (u16, String) {
        match reqwest::get(format!("http://127.0.0.1:{}{path}", self.port)).await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Poll `probe` until it gives a value, or fail after `within` with what
/// the last look saw.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: not within {within:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn policy(kube: &KubeFleet) -> TrafficPolicy {
    let api: Api<TrafficPolicy> = Api::namespaced(kube.hub.admin().await, "production");
    api.get("reviews").await.expect("policy")
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// The production WasmPlugin in `member`, as the admin reads it.
async fn plugin(kube: &KubeFleet, member: &str) -> Option<Value> {
    let object = json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                        "metadata": {"name": "tideway-reviews", "namespace": "production"}});
    let api = dynamic_api(&kube.member(member).admin().await, &object).await;
    api.get_opt("tideway-reviews")
        .await
        .expect("read as admin")
        .map(|o| serde_json::to_value(o).expect("json"))
}

fn revision_of(plugin: &Value) -> String {
    plugin["metadata"]["annotations"]["traffic.tideway.dev/revision"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn hangzhou_weight(plugin: &Value) -> Option<f64> {
    plugin["spec"]["pluginConfig"]["services"][0]["destinations"]
        .as_array()?
        .iter()
        .find(|d| d["cluster"] == "cluster-hangzhou")?["weight"]
        .as_f64()
}

/// Every member Ready at the policy's current generation, the policy Ready,
/// every member's WasmPlugin at the status revision: that revision.
async fn wait_rolled_out(kube: &KubeFleet, replicas: &[&Replica], within: Duration) -> String {
    let logs = || {
        replicas
            .iter()
            .map(|r| r.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let revision = wait_for("the policy Ready on every member", within, || async {
        let p = policy(kube).await;
        let status = p.status.clone().unwrap_or_default();
        let current = status.observed_generation == p.metadata.generation
            && is_true(&status.conditions, "Ready")
            && status.members.len() == 3
            && status
                .members
                .iter()
                .all(|m| is_true(&m.conditions, "Ready"));
        match (current, status.revision) {
            (true, Some(r)) => Ok(r),
            _ => Err(format!("{:#?}\n{}", p.status, logs())),
        }
    })
    .await;
    for member in MEMBERS {
        let found = plugin(kube, member).await.expect("WasmPlugin applied");
        assert_eq!(revision_of(&found), revision, "{member}");
    }
    revision
}

async fn edit(kube: &KubeFleet, object: &Value) {
    let admin = kube.hub.admin().await;
    kube.hub.apply_as(&admin, "platform-team", object).await;
}

async fn lease_holder(kube: &KubeFleet) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(kube.hub.admin().await, "tideway-system");
    leases
        .get_opt("tideway-controller")
        .await
        .expect("read Lease")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_rolls_out_follows_edits_and_reports_per_member_status() {
    let kube = start().await;
    let replica = Replica::start(&kube, "controller-a");
    let first = wait_rolled_out(&kube, &[&replica], Duration::from_secs(60)).await;
    let p = policy(&kube).await;
    let status = p.status.clone().expect("status");
    let ready = find(&status.conditions, "Ready").expect("Ready");
    assert_eq!(ready.reason, "Applied");
    assert_eq!(ready.observed_generation, p.metadata.generation);
    assert!(ready.last_transition_time.is_some(), "{ready:?}");
    assert!(!is_true(&status.conditions, "Degraded"));
    assert!(!is_true(&status.conditions, "Progressing"));
    // The status holds API messages and counts, never a credential.
    let status_text = serde_json::to_string(&status).expect("json");
    for member in MEMBERS {
        let token = kube.member(member).controller_token.clone().expect("token");
        assert!(!status_text.contains(&token), "a token in the status");
        assert!(!replica.log().contains(&token), "a token in the log");
    }

    // Probes and metrics, from the same listener.
    assert_eq!(replica.get("/healthz").await.0, 200, "{}", replica.log());
    let readyz = replica.get("/readyz").await;
    assert_eq!(readyz.0, 200, "{readyz:?}\n{}", replica.log());
    let (code, metrics) = replica.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metric(
            &metrics,
            "tideway_controller_reconciles_total{result=\"applied\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "tideway_controller_leader"),
        Some(1.0),
        "{metrics}"
    );
    for member in MEMBERS {
        let series = format!(
            "tideway_controller_member_apply_seconds_count{{member=\"{member}\",outcome=\"applied\"}}"
        );
        assert!(
            metric(&metrics, &series).is_some_and(|n| n >= 1.0),
            "{series} in {metrics}"
        );
    }

    // An edit reaches every member through the watch.
    edit(&kube, &policy_object(70, "cluster-hangzhou")).await;
    let second = wait_rolled_out(&kube, &[&replica], Duration::from_secs(30)).await;
    assert_ne!(first, second, "a new render has a new revision");
    for member in MEMBERS {
        let found = plugin(&kube, member).await.expect("plugin");
        assert_eq!(hangzhou_weight(&found), Some(70.0), "{member}: {found:#}");
    }

    // Discovery: cluster-beijing's endpoints fall to zero ready (one not
    // ready remains) → it leaves the destinations in every member's filter
    // configuration, beijing's own included; back when they are ready.
    set_endpoints(&kube, "cluster-beijing", 0).await;
    let log = || replica.log();
    wait_destinations(&kube, &["cluster-hangzhou", "cluster-shanghai"], &log).await;
    let drained = wait_for("status.drained", Duration::from_secs(30), || async {
        let p = policy(&kube).await;
        let status = p.status.clone().unwrap_or_default();
        if status.drained == ["cluster-beijing"] && is_true(&status.conditions, "Ready") {
            Ok(status)
        } else {
            Err(format!("{:#?}", p.status))
        }
    })
    .await;
    assert_ne!(drained.revision.as_deref(), Some(second.as_str()));
    // The weights API `tideway run` serves says so too (proxies polling it
    // stop sending there before any WasmPlugin changes).
    assert_eq!(replica.weights_drained("cluster-beijing").await, Ok(true));
    assert_eq!(replica.weights_drained("cluster-shanghai").await, Ok(false));
    // The dashboard it serves shows the rollout per member and has the
    // policy's plugin config for the what-if.
    let live: Value = reqwest::get(format!(
        "http://127.0.0.1:{}/ui/api/live",
        replica.weights_port
    ))
    .await
    .expect("the dashboard's live API answers")
    .json()
    .await
    .expect("JSON");
    let rollout = live["rollout"]
        .as_object()
        .and_then(|r| r.values().next())
        .unwrap_or_else(|| panic!("no rollout in {live}"));
    let members: Vec<&str> = rollout["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members in {rollout}"))
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(members.len(), 3, "every member's rollout: {rollout}");
    assert!(
        live["configs"]["reviews"]["services"][0]["destinations"].is_array(),
        "the what-if's config for reviews: {live}"
    );
    set_endpoints(&kube, "cluster-beijing", 1).await;
    wait_destinations(
        &kube,
        &["cluster-hangzhou", "cluster-shanghai", "cluster-beijing"],
        &log,
    )
    .await;
    // The same destinations are the same render: the status says so once
    // the rollout finished.
    wait_for(
        "status back at the undrained revision",
        Duration::from_secs(30),
        || async {
            let p = policy(&kube).await;
            let status = p.status.clone().unwrap_or_default();
            if status.revision.as_deref() == Some(second.as_str())
                && status.drained.is_empty()
                && is_true(&status.conditions, "Ready")
            {
                Ok(())
            } else {
                Err(format!("{:#?}", p.status))
            }
        },
    )
    .await;
    wait_rolled_out(&kube, &[&replica], Duration::from_secs(30)).await;
    assert_eq!(replica.weights_drained("cluster-beijing").await, Ok(false));

    // An invalid policy: a condition naming the field; nothing applied.
    edit(&kube, &policy_object(90, "cluster-nowhere")).await;
    let invalid = wait_for(
        "the InvalidPolicy condition",
        Duration::from_secs(30),
        || async {
            let p = policy(&kube).await;
            let status = p.status.clone().unwrap_or_default();
            match find(&status.conditions, "Ready") {
                Some(c)
                    if c.reason == "InvalidPolicy"
                        && status.observed_generation == p.metadata.generation =>
                {
                    Ok(status)
                }
                _ => Err(format!("{:#?}", p.status)),
            }
        },
    )
    .await;
    let ready = find(&invalid.conditions, "Ready").expect("Ready");
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("spec.destinations[0].cluster"),
        "{ready:?}"
    );
    assert!(ready.message.contains("cluster-nowhere"), "{ready:?}");
    assert!(is_true(&invalid.conditions, "Degraded"));
    for member in MEMBERS {
        let found = plugin(&kube, member).await.expect("plugin");
        assert_eq!(
            revision_of(&found),
            second,
            "{member} changed by an invalid policy"
        );
        assert_eq!(hangzhou_weight(&found), Some(70.0));
    }

    // A member that refuses the WasmPlugin: that member Degraded with the
    // API server's message; its wave (1) fails the gate and is rolled back
    // to the revision it had, from the record kept in each member; wave 0
    // passed its gate and keeps the new render.
    refuse_priority_over_5(&kube, "cluster-beijing").await;
    edit(&kube, &policy_object(60, "cluster-hangzhou")).await;
    let degraded = wait_for(
        "cluster-beijing Degraded",
        Duration::from_secs(30),
        || async {
            let p = policy(&kube).await;
            let status = p.status.clone().unwrap_or_default();
            let beijing = status.members.iter().find(|m| m.name == "cluster-beijing");
            match beijing {
                Some(b)
                    if status.observed_generation == p.metadata.generation
                        && is_true(&b.conditions, "Degraded") =>
                {
                    Ok(status)
                }
                _ => Err(format!("{:#?}", p.status)),
            }
        },
    )
    .await;
    let beijing = degraded
        .members
        .iter()
        .find(|m| m.name == "cluster-beijing")
        .expect("beijing");
    let why = find(&beijing.conditions, "Degraded").expect("Degraded");
    assert_eq!(why.reason, "Rejected");
    assert!(
        why.message
            .contains("WasmPlugin production/tideway-reviews"),
        "{why:?}"
    );
    assert!(
        why.message.contains("spec.priority"),
        "the API's own message: {why:?}"
    );
    assert!(why.message.contains("422"), "{why:?}");
    // It refused the first object: nothing of this rollout to undo there.
    assert!(
        why.message.contains(&format!(
            "nothing of this rollout to undo: it keeps {second}"
        )),
        "{why:?}"
    );
    assert_eq!(
        beijing.revision.as_deref(),
        Some(second.as_str()),
        "keeps the revision it has"
    );
    let shanghai = degraded
        .members
        .iter()
        .find(|m| m.name == "cluster-shanghai")
        .expect("shanghai");
    let back = find(&shanghai.conditions, "Ready").expect("Ready");
    assert_eq!(
        (back.status.as_str(), back.reason.as_str()),
        ("False", "RolledBack"),
        "{shanghai:#?}"
    );
    assert!(
        back.message
            .contains("wave 1 failed its health gate at cluster-beijing"),
        "{back:?}"
    );
    assert!(!is_true(&shanghai.conditions, "Degraded"), "{shanghai:#?}");
    assert_eq!(shanghai.revision.as_deref(), Some(second.as_str()));
    for member in ["cluster-shanghai", "cluster-beijing"] {
        let found = plugin(&kube, member).await.expect("plugin");
        assert_eq!(
            hangzhou_weight(&found),
            Some(70.0),
            "{member} rolled back: {found:#}"
        );
        assert_eq!(revision_of(&found), second, "{member}");
    }
    let hangzhou = degraded
        .members
        .iter()
        .find(|m| m.name == "cluster-hangzhou")
        .expect("hangzhou");
    assert!(is_true(&hangzhou.conditions, "Ready"), "{hangzhou:#?}");
    let found = plugin(&kube, "cluster-hangzhou").await.expect("plugin");
    assert_eq!(
        hangzhou_weight(&found),
        Some(60.0),
        "wave 0 passed its gate"
    );
    let ready = find(&degraded.conditions, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "WaveFailed")
    );
    assert!(
        ready.message.contains("degraded: cluster-beijing"),
        "{ready:?}"
    );
    assert!(
        ready.message.contains("rollout stopped at wave 1"),
        "{ready:?}"
    );
    let (_, metrics) = replica.get("/metrics").await;
    assert!(
        metric(
            &metrics,
            "tideway_controller_reconciles_total{result=\"degraded\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

/// Make `member` refuse WasmPlugins with priority > 5 (the render uses 10),
/// as a stricter admission policy would.
async fn refuse_priority_over_5(kube: &KubeFleet, member: &str) {
    kube_fixture::refuse_wasmplugin_priority_over_5(&kube.member(member).admin().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_acts_and_the_other_takes_over_when_it_stops() {
    let kube = start().await;
    let mut a = Replica::start(&kube, "controller-a");
    // a leads before b starts, so which one acts is known.
    wait_for(
        "controller-a holds the Lease",
        Duration::from_secs(30),
        || async {
            match lease_holder(&kube).await {
                Some(h) if h == "controller-a" => Ok(()),
                other => Err(format!("{other:?}\n{}", a.log())),
            }
        },
    )
    .await;
    let mut b = Replica::start(&kube, "controller-b");
    wait_rolled_out(&kube, &[&a, &b], Duration::from_secs(60)).await;
    // The standby is healthy and ready, does not lead and has reconciled nothing.
    wait_for("controller-b ready", Duration::from_secs(10), || async {
        match b.get("/readyz").await {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (_, standby) = b.get("/metrics").await;
    assert_eq!(
        metric(&standby, "tideway_controller_leader"),
        Some(0.0),
        "{standby}"
    );
    assert!(
        !standby.contains("tideway_controller_reconciles_total{"),
        "{standby}"
    );
    assert!(!b.log().contains("leading"), "{}", b.log());

    // The leader dies without a word (SIGKILL): b takes over once the Lease
    // term has passed, and the next edit reaches every member through b.
    a.kill();
    wait_for(
        "controller-b holds the Lease",
        Duration::from_secs(20),
        || async {
            match lease_holder(&kube).await {
                Some(h) if h == "controller-b" => Ok(()),
                other => Err(format!("{other:?}\n{}", b.log())),
            }
        },
    )
    .await;
    edit(&kube, &policy_object(80, "cluster-hangzhou")).await;
    wait_rolled_out(&kube, &[&b], Duration::from_secs(30)).await;
    for member in MEMBERS {
        let found = plugin(&kube, member).await.expect("plugin");
        assert_eq!(hangzhou_weight(&found), Some(80.0), "{member}");
    }

    // A graceful stop (SIGTERM) releases the Lease at once: a new replica
    // leads well within one Lease term of b's exit, and b exits with 0.
    let status = b.terminate().expect("b exited");
    assert!(status.success(), "{status:?}\n{}", b.log());
    assert!(b.log().contains("released the Lease"), "{}", b.log());
    let leases: Api<Lease> = Api::namespaced(kube.hub.admin().await, "tideway-system");
    let lease = leases.get("tideway-controller").await.expect("lease");
    assert_eq!(lease.spec.and_then(|s| s.holder_identity), None);
    let c = Replica::start(&kube, "controller-c");
    let started = Instant::now();
    wait_for(
        "controller-c holds the Lease",
        Duration::from_secs(20),
        || async {
            match lease_holder(&kube).await {
                Some(h) if h == "controller-c" => Ok(()),
                other => Err(format!("{other:?}\n{}", c.log())),
            }
        },
    )
    .await;
    // b's term is 4 s, and c first saw the record after it started: a
    // takeover by expiry could not come sooner than that.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}: c waited for the term, the Lease was not released",
        started.elapsed()
    );
}

/// `tideway status` (the binary) with the fleet's kubeconfig: exit code,
/// stdout.
fn tideway_status(kube: &KubeFleet, extra: &[&str]) -> (Option<i32>, String, String) {
    let kubeconfig = kube.write_kubeconfig();
    let out = Command::new(env!("CARGO_BIN_EXE_tideway"))
        .arg("status")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--hub-context", "hub", "reviews", "-n", "production"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run tideway status");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status_json(kube: &KubeFleet) -> (Option<i32>, Value) {
    let (code, stdout, stderr) = tideway_status(kube, &["-o", "json"]);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("status -o json: {e}\nstdout: {stdout}\nstderr: {stderr}"));
    (code, report)
}

fn member_of<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("no member {name} in {report:#}"))
}

fn wasm_plugin_view(member: &Value) -> &Value {
    member["objects"]
        .as_array()
        .and_then(|os| {
            os.iter()
                .find(|o| o["object"] == "WasmPlugin production/tideway-reviews")
        })
        .unwrap_or_else(|| panic!("no WasmPlugin in {member:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_every_member_and_fails_on_drift_and_an_unreachable_member() {
    let mut kube = start().await;
    // cluster-hangzhou's Istio CRDs carry the release label a Helm
    // install writes; the others' (plain crd-all.gen.yaml) do not.
    {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let crds: Api<CustomResourceDefinition> =
            Api::all(kube.member("cluster-hangzhou").admin().await);
        crds.patch(
            "wasmplugins.extensions.istio.io",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"labels": {"app.kubernetes.io/version": "1.30.3"}}}),
            ),
        )
        .await
        .expect("label the CRD");
    }
    let replica = Replica::start(&kube, "controller-a");
    let revision = wait_rolled_out(&kube, &[&replica], Duration::from_secs(60)).await;

    let (code, report) = status_json(&kube);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["healthy"], true, "{report:#}");
    assert_eq!(report["problems"], json!([]));
    assert_eq!(report["expectedRevision"], revision.as_str());
    assert_eq!(report["revisionSource"], "controller");
    assert_eq!(report["policy"]["service"], "production/reviews");
    let ready = report["controller"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .expect("the controller's Ready");
    assert_eq!(ready["status"], "True", "{report:#}");
    for name in MEMBERS {
        let m = member_of(&report, name);
        assert_eq!(m["api"]["reachable"], true, "{m:#}");
        assert_eq!(m["api"]["version"], "v1.20.2", "{m:#}");
        assert_eq!(m["revision"], revision.as_str(), "{m:#}");
        assert!(
            m["istio"]["kinds"]
                .as_array()
                .is_some_and(|ks| !ks.is_empty() && ks.iter().all(|k| k["served"] == true)),
            "{m:#}"
        );
        assert!(
            m["istio"]["servedVersions"]["networking.istio.io"]
                .as_array()
                .is_some_and(|vs| vs.contains(&json!("v1"))),
            "{m:#}"
        );
        for object in m["objects"].as_array().expect("objects") {
            assert_eq!(object["present"], true, "{object:#}");
            assert_eq!(object["current"], true, "{object:#}");
            assert_eq!(
                object["drift"],
                json!({"managers": [], "fields": []}),
                "{object:#}"
            );
        }
        let plugin = wasm_plugin_view(m);
        assert_eq!(
            plugin["image"],
            "oci://registry.example.com/tideway/filter@sha256:d9b3ffabde57d6c94660e7ae683aa14bda1f5820614b9f6d4f8ccc0b2684f01e"
        );
        assert_eq!(
            plugin["sha256"],
            "d9b3ffabde57d6c94660e7ae683aa14bda1f5820614b9f6d4f8ccc0b2684f01e"
        );
        assert_eq!(m["endpoints"]["ready"], 2, "{m:#}");
        assert_eq!(m["endpoints"]["notReady"], 1, "{m:#}");
        assert_eq!(
            m["weights"]["destinations"],
            json!([
                {"name": "cluster-hangzhou", "weight": 50.0},
                {"name": "cluster-shanghai", "weight": 30.0},
                {"name": "cluster-beijing", "weight": 20.0},
            ]),
            "{m:#}"
        );
        assert_eq!(m["weights"]["source"], Value::Null, "{m:#}");
        assert_eq!(
            m["weights"]["schemaVersion"],
            tideway_filter::config::SCHEMA_VERSION
        );
        assert!(
            m["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .is_some_and(|c| c["status"] == "True"),
            "{m:#}"
        );
    }
    assert_eq!(
        member_of(&report, "cluster-hangzhou")["istio"]["version"],
        "1.30.3"
    );
    assert_eq!(
        member_of(&report, "cluster-shanghai")["istio"]["version"],
        Value::Null
    );

    // Break two members: someone edits shanghai's WasmPlugin by hand (a
    // merge patch as `kubectl edit` sends it); beijing's API server goes away.
    let object = json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                        "metadata": {"name": "tideway-reviews", "namespace": "production"}});
    let plugins = dynamic_api(&kube.member("cluster-shanghai").admin().await, &object).await;
    plugins
        .patch(
            "tideway-reviews",
            &kube::api::PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &kube::api::Patch::Merge(json!({"spec": {"priority": 7}})),
        )
        .await
        .expect("edit by hand");
    // The controller sees the edit through its watch of the member and
    // reports it (not forced back); then beijing goes.
    wait_for(
        "the controller's FieldConflict",
        Duration::from_secs(20),
        || async {
            let status = policy(&kube).await.status.unwrap_or_default();
            match find(&status.conditions, "Degraded") {
                Some(c) if c.reason == "FieldConflict" => Ok(()),
                _ => Err(format!("{status:#?}")),
            }
        },
    )
    .await;
    kube.member_mut("cluster-beijing").stop();

    let (code, report) = status_json(&kube);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["healthy"], false);
    let shanghai = member_of(&report, "cluster-shanghai");
    let drift = &wasm_plugin_view(shanghai)["drift"];
    assert_eq!(drift["managers"], json!(["kubectl-edit"]), "{shanghai:#}");
    assert_eq!(drift["fields"], json!([".spec.priority"]), "{shanghai:#}");
    assert_eq!(shanghai["api"]["reachable"], true);
    let beijing = member_of(&report, "cluster-beijing");
    assert_eq!(beijing["api"]["reachable"], false, "{beijing:#}");
    assert!(
        beijing["api"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{beijing:#}"
    );
    assert_eq!(
        member_of(&report, "cluster-hangzhou")["problems"],
        json!([]),
        "{report:#}"
    );
    let problems: Vec<&str> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(problems.len(), 4, "{problems:#?}");
    let has = |prefix: &str| problems.iter().any(|p| p.starts_with(prefix));
    // What the controller said, for the policy and for shanghai.
    assert!(
        has("controller: Degraded (FieldConflict): "),
        "{problems:#?}"
    );
    assert!(
        has("cluster-shanghai: controller: Degraded (FieldConflict): WasmPlugin production/tideway-reviews: fields owned by another manager, not forced: .spec.priority (owned by \"kubectl-edit\")"),
        "{problems:#?}"
    );
    assert!(
        has("cluster-shanghai: WasmPlugin production/tideway-reviews changed by \"kubectl-edit\" since the last apply; differs from the render at .spec.priority"),
        "{problems:#?}"
    );
    assert!(has("cluster-beijing: API unreachable: "), "{problems:#?}");

    // The table says the same to a human; nothing printed holds a token.
    let (code, table, stderr) = tideway_status(&kube, &[]);
    assert_eq!(code, Some(1), "{table}\n{stderr}");
    // What a user sees (shown with --nocapture).
    eprintln!("{table}");
    for needle in [
        "DEGRADED",
        "UNREACHABLE",
        "DRIFT 1",
        "kubectl-edit",
        "1.30.3",
    ] {
        assert!(table.contains(needle), "{needle:?} not in\n{table}");
    }
    let json_text = report.to_string();
    for server in std::iter::once(&kube.hub).chain(&kube.members) {
        let token = server.controller_token.clone().expect("token");
        assert!(!table.contains(&token) && !stderr.contains(&token));
        assert!(!json_text.contains(&token));
    }
}

/// A second policy in the same fleet (service ratings).
fn other_policy() -> Value {
    let mut p = policy_object(50, "cluster-hangzhou");
    p["metadata"]["name"] = json!("ratings");
    p["spec"]["service"]["name"] = json!("ratings");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_api_restart_resumes_from_the_watch_without_re_applying() {
    let mut kube = start().await;
    // A Lease term longer than the restart: this is about the watch (a
    // leader that cannot renew within its term exits, by design).
    let replica = Replica::start_with_lease(&kube, "controller-a", "300s", "2s");
    wait_rolled_out(&kube, &[&replica], Duration::from_secs(60)).await;
    let applied = || async {
        let (_, text) = replica.get("/metrics").await;
        metric(
            &text,
            "tideway_controller_reconciles_total{result=\"applied\"}",
        )
        .unwrap_or(0.0)
    };
    let before = applied().await;
    assert!(before >= 1.0, "{}", replica.log());

    kube.hub.restart().await;

    // The watch resumed: a policy created after the restart is rolled out.
    edit(&kube, &other_policy()).await;
    wait_for(
        "ratings Ready after the restart",
        Duration::from_secs(90),
        || async {
            let api: Api<TrafficPolicy> = Api::namespaced(kube.hub.admin().await, "production");
            let p = api.get("ratings").await.map_err(|e| e.to_string())?;
            let status = p.status.clone().unwrap_or_default();
            if status.observed_generation == p.metadata.generation
                && is_true(&status.conditions, "Ready")
            {
                Ok(())
            } else {
                Err(format!("{:#?}\n{}", p.status, replica.log()))
            }
        },
    )
    .await;
    // ... and reviews, unchanged, was not rolled out again (its relist is
    // answered from memory): exactly one more applied reconcile, ratings'.
    assert_eq!(applied().await, before + 1.0, "{}", replica.log());
    assert_eq!(replica.get("/readyz").await.0, 200);

    // An edit after the restart still reaches every member.
    edit(&kube, &policy_object(70, "cluster-hangzhou")).await;
    wait_rolled_out(&kube, &[&replica], Duration::from_secs(60)).await;
    for member in MEMBERS {
        let found = plugin(&kube, member).await.expect("plugin");
        assert_eq!(hangzhou_weight(&found), Some(70.0), "{member}");
    }
    assert_eq!(applied().await, before + 2.0, "{}", replica.log());
}

/// The Events on the reviews policy, as `reason: note` lines.
async fn policy_events(kube: &KubeFleet) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    let events: Api<Event> = Api::namespaced(kube.hub.admin().await, "production");
    events
        .list(&Default::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("reviews"))
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect()
}

/// Which of the reviews policy's objects (and its revision record) are
/// still in `member`.
async fn left_in(kube: &KubeFleet, member: &str) -> Vec<String> {
    let objects = [
        (
            "extensions.istio.io/v1alpha1",
            "WasmPlugin",
            "production",
            "tideway-reviews",
        ),
        (
            "networking.istio.io/v1",
            "DestinationRule",
            "production",
            "tideway-reviews",
        ),
        (
            "networking.istio.io/v1",
            "VirtualService",
            "production",
            "tideway-reviews",
        ),
        (
            "security.istio.io/v1",
            "AuthorizationPolicy",
            "istio-system",
            "tideway-reviews-no-routing-header",
        ),
        (
            "v1",
            "ConfigMap",
            "tideway-system",
            "tideway-revisions-production-reviews",
        ),
    ];
    let admin = kube.member(member).admin().await;
    let mut left = Vec::new();
    for (api_version, kind, namespace, name) in objects {
        let object = json!({"apiVersion": api_version, "kind": kind,
                            "metadata": {"name": name, "namespace": namespace}});
        let api = dynamic_api(&admin, &object).await;
        if api.get_opt(name).await.expect("read as admin").is_some() {
            left.push(format!("{kind} {namespace}/{name}"));
        }
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_policy_is_pruned_from_every_member_before_it_goes_and_events_say_so() {
    let mut kube = start().await;
    let replica = Replica::start(&kube, "controller-a");
    let revision = wait_rolled_out(&kube, &[&replica], Duration::from_secs(60)).await;
    use kube::ResourceExt;
    assert!(
        policy(&kube)
            .await
            .finalizers()
            .contains(&"traffic.tideway.dev/cleanup".to_string()),
        "the cleanup finalizer"
    );
    for member in MEMBERS {
        assert_eq!(left_in(&kube, member).await.len(), 5, "{member}");
    }
    wait_for("the Applied Event", Duration::from_secs(30), || async {
        let events = policy_events(&kube).await;
        let want = format!("Applied: revision {revision} applied to all 3 members");
        if events.contains(&want) {
            Ok(())
        } else {
            Err(format!("{events:#?}"))
        }
    })
    .await;

    // Deleted while cluster-beijing is down: the reachable members are
    // cleaned at once, the policy stays (its finalizer) and says why.
    kube.member_mut("cluster-beijing").stop();
    let api: Api<TrafficPolicy> = Api::namespaced(kube.hub.admin().await, "production");
    api.delete("reviews", &Default::default())
        .await
        .expect("delete the policy");
    wait_for(
        "hangzhou and shanghai cleaned, beijing pending",
        Duration::from_secs(60),
        || async {
            let mut left = Vec::new();
            for member in ["cluster-hangzhou", "cluster-shanghai"] {
                left.extend(left_in(&kube, member).await);
            }
            let events = policy_events(&kube).await;
            let pending = events
                .iter()
                .any(|e| e.starts_with("CleanupPending: ") && e.contains("cluster-beijing"));
            if left.is_empty() && pending {
                Ok(())
            } else {
                Err(format!("left: {left:?}\n{events:#?}\n{}", replica.log()))
            }
        },
    )
    .await;
    let waiting = api.get_opt("reviews").await.expect("read");
    assert!(
        waiting.is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
        "the policy waits for cluster-beijing"
    );

    // cluster-beijing is back: cleaned, and the policy goes.
    kube.member_mut("cluster-beijing").restart().await;
    wait_for("the policy gone", Duration::from_secs(90), || async {
        match api.get_opt("reviews").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}\n{}", replica.log())),
        }
    })
    .await;
    assert_eq!(
        left_in(&kube, "cluster-beijing").await,
        Vec::<String>::new()
    );
    let events = policy_events(&kube).await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("CleanedUp: deleted ") && e.ends_with(" from 3 members")),
        "{events:#?}"
    );
}

/// `oncall` takes `spec` of `member`'s object of `kind` (forced, as a
/// human's `kubectl apply --server-side --force-conflicts` would).
async fn take_over(kube: &KubeFleet, member: &str, kind: &str, api_version: &str, spec: Value) {
    let theirs = json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": "tideway-reviews", "namespace": "production"},
        "spec": spec,
    });
    let server = kube.member(member);
    server
        .apply_as(&server.admin().await, "oncall", &theirs)
        .await;
}

/// The controller's writes to every member so far, per member.
fn controller_writes(kube: &KubeFleet) -> Vec<(String, Vec<String>)> {
    MEMBERS
        .iter()
        .map(|m| {
            let writes = kube
                .member(m)
                .controller_writes()
                .iter()
                .map(|w| format!("{} {} ({})", w.verb, w.object, w.code))
                .collect();
            (m.to_string(), writes)
        })
        .collect()
}

/// A replica's count of reconciles that found nothing to do.
async fn unchanged_reconciles(replica: &Replica) -> f64 {
    let (_, metrics) = replica.get("/metrics").await;
    metric(
        &metrics,
        "tideway_controller_reconciles_total{result=\"unchanged\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_resync_writes_nothing_and_a_hand_edit_is_repaired_or_reported_from_the_watch() {
    let kube = start().await;
    let revision = {
        let first = Replica::start(&kube, "controller-a");
        wait_rolled_out(&kube, &[&first], Duration::from_secs(60)).await
    };

    // A restarted controller that resyncs every 2 s: it remembers nothing,
    // reads what the members have, and sends nothing (counted from the
    // members' own audit logs).
    let before = controller_writes(&kube);
    let resyncing = Replica::start_with(&kube, "controller-b", "4s", "1s", "2s");
    wait_for("five quiet resyncs", Duration::from_secs(60), || async {
        let n = unchanged_reconciles(&resyncing).await;
        if n >= 5.0 {
            Ok(())
        } else {
            Err(format!("{n} so far\n{}", resyncing.log()))
        }
    })
    .await;
    assert_eq!(
        controller_writes(&kube),
        before,
        "a resync with nothing to repair wrote to a member:\n{}",
        resyncing.log()
    );
    drop(resyncing);

    // A controller whose resync is an hour away: what follows is repaired
    // (or reported) because the members' watches saw it.
    let replica = Replica::start(&kube, "controller-c");
    wait_for("controller-c leads", Duration::from_secs(30), || async {
        if lease_holder(&kube).await.as_deref() == Some("controller-c") {
            Ok(())
        } else {
            Err(replica.log())
        }
    })
    .await;
    wait_rolled_out(&kube, &[&replica], Duration::from_secs(30)).await;

    // Deleted by hand: put back.
    let virtual_service = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                                 "metadata": {"name": "tideway-reviews", "namespace": "production"}});
    let api = dynamic_api(
        &kube.member("cluster-shanghai").admin().await,
        &virtual_service,
    )
    .await;
    api.delete("tideway-reviews", &Default::default())
        .await
        .expect("delete as admin");
    let deleted = Instant::now();
    wait_for(
        "the VirtualService put back",
        Duration::from_secs(10),
        || async {
            match api.get_opt("tideway-reviews").await {
                Ok(Some(_)) => Ok(()),
                other => Err(format!("{other:?}\n{}", replica.log())),
            }
        },
    )
    .await;
    eprintln!(
        "VirtualService put back {:?} after its deletion",
        deleted.elapsed()
    );

    // Taken over by hand: reported as a conflict, never forced; the member
    // keeps its revision, no rollback.
    take_over(
        &kube,
        "cluster-shanghai",
        "DestinationRule",
        "networking.istio.io/v1",
        json!({"host": "reviews-hotfix.production.svc.cluster.local"}),
    )
    .await;
    let edited = Instant::now();
    let status = wait_for(
        "the conflict in the status",
        Duration::from_secs(10),
        || async {
            let status = policy(&kube).await.status.unwrap_or_default();
            let shanghai = status.members.iter().find(|m| m.name == "cluster-shanghai");
            match shanghai.and_then(|m| find(&m.conditions, "Degraded")) {
                Some(c) if c.status == "True" && c.reason == "FieldConflict" => Ok(status),
                _ => Err(format!("{status:#?}\n{}", replica.log())),
            }
        },
    )
    .await;
    eprintln!("conflict reported {:?} after the edit", edited.elapsed());
    let shanghai = status
        .members
        .iter()
        .find(|m| m.name == "cluster-shanghai")
        .expect("shanghai");
    assert_eq!(shanghai.revision.as_deref(), Some(revision.as_str()));
    let degraded = find(&status.conditions, "Degraded").expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "FieldConflict"),
        "{status:#?}"
    );
    for needle in [".spec.host", "\"oncall\"", "cluster-shanghai"] {
        assert!(degraded.message.contains(needle), "{needle}: {degraded:?}");
    }
    let rule = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                      "metadata": {"name": "tideway-reviews", "namespace": "production"}});
    let found = dynamic_api(&kube.member("cluster-shanghai").admin().await, &rule)
        .await
        .get("tideway-reviews")
        .await
        .expect("rule");
    assert_eq!(
        found.data["spec"]["host"],
        "reviews-hotfix.production.svc.cluster.local"
    );
    for member in MEMBERS {
        let found = plugin(&kube, member).await.expect("plugin");
        assert_eq!(revision_of(&found), revision, "{member}");
    }
    let events = policy_events(&kube).await;
    assert!(
        !events.iter().any(|e| e.starts_with("RolledBack")),
        "{events:#?}"
    );
}

/// The Events on the reviews policy: (reason, note, how many times).
async fn policy_event_series(kube: &KubeFleet) -> Vec<(String, String, i32)> {
    use k8s_openapi::api::events::v1::Event;
    let events: Api<Event> = Api::namespaced(kube.hub.admin().await, "production");
    events
        .list(&Default::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("reviews"))
        .map(|e| {
            (
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
                e.series.map_or(1, |s| s.count),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_true_for_its_latest_occurrence() {
    let mut kube = start().await;
    let replica = Replica::start(&kube, "controller-a");
    // Three rollouts within a minute: A, B, and A again.
    let a = wait_rolled_out(&kube, &[&replica], Duration::from_secs(60)).await;
    edit(&kube, &policy_object(70, "cluster-hangzhou")).await;
    let b = wait_rolled_out(&kube, &[&replica], Duration::from_secs(30)).await;
    edit(&kube, &policy_object(50, "cluster-hangzhou")).await;
    let again = wait_rolled_out(&kube, &[&replica], Duration::from_secs(30)).await;
    assert_eq!(again, a);
    // Two different degradations: a conflict in shanghai, then also
    // beijing gone.
    take_over(
        &kube,
        "cluster-shanghai",
        "DestinationRule",
        "networking.istio.io/v1",
        json!({"host": "reviews-hotfix.production.svc.cluster.local"}),
    )
    .await;
    wait_for("the conflict", Duration::from_secs(20), || async {
        let events = policy_event_series(&kube).await;
        if events
            .iter()
            .any(|(r, n, _)| r == "Degraded" && n.contains("FieldConflict"))
        {
            Ok(())
        } else {
            Err(format!("{events:#?}"))
        }
    })
    .await;
    kube.member_mut("cluster-beijing").stop();
    edit(&kube, &policy_object(60, "cluster-hangzhou")).await;
    wait_for("beijing unreachable", Duration::from_secs(40), || async {
        let events = policy_event_series(&kube).await;
        if events
            .iter()
            .any(|(r, n, _)| r == "Degraded" && n.contains("Unreachable"))
        {
            Ok(())
        } else {
            Err(format!("{events:#?}\n{}", replica.log()))
        }
    })
    .await;

    let events = policy_event_series(&kube).await;
    let applied: Vec<&(String, String, i32)> =
        events.iter().filter(|(r, _, _)| r == "Applied").collect();
    let note = |rev: &str| format!("revision {rev} applied to all 3 members");
    assert_eq!(
        applied.len(),
        2,
        "one Applied event per revision: {events:#?}"
    );
    assert!(
        applied
            .iter()
            .any(|(_, n, count)| *n == note(&a) && *count == 2),
        "A, twice: {events:#?}"
    );
    assert!(
        applied
            .iter()
            .any(|(_, n, count)| *n == note(&b) && *count == 1),
        "B, once: {events:#?}"
    );
    let degraded: Vec<&(String, String, i32)> =
        events.iter().filter(|(r, _, _)| r == "Degraded").collect();
    assert!(
        degraded
            .iter()
            .any(|(_, n, _)| n.contains("FieldConflict") && !n.contains("Unreachable")),
        "{events:#?}"
    );
    assert!(
        degraded
            .iter()
            .any(|(_, n, _)| n.contains("cluster-beijing (Unreachable")),
        "{events:#?}"
    );
    // Each Degraded note is its own: no two events share one.
    let mut notes: Vec<&String> = degraded.iter().map(|(_, n, _)| n).collect();
    notes.sort();
    notes.dedup();
    assert_eq!(notes.len(), degraded.len(), "{events:#?}");
}
