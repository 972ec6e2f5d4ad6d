//! `tideway apply` against real API servers (the kube tier): a hub and three
//! members, each a `kube-apiserver` 1.20 with Istio's CRDs, reached with the
//! controller's own tokens bound to the RBAC in `manifests/`.
//!
//! Fleet: cluster-hangzhou (wave 0, kubeconfigContext), cluster-shanghai
//! (wave 1, a kubeconfig in a hub Secret), cluster-beijing (wave 1, the
//! context named like the member).

mod kube_fixture;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::config::Kubeconfig;
use kube_fixture::{dynamic_api, KubeFleet};
use serde_json::{json, Value};
use tideway_controller::apply::{
    self, FleetReport, MemberStatus, ObjectAction, Options, PolicyRef, Progress, Rollback, Runs,
};

const MEMBERS: &[&str] = &["cluster-hangzhou", "cluster-shanghai", "cluster-beijing"];
const IMAGE: &str = "registry.example.com/tideway/filter@sha256:d9b3ffabde57d6c94660e7ae683aa14bda1f5820614b9f6d4f8ccc0b2684f01e";

fn fleet_yaml() -> String {
    r#"
apiVersion: traffic.tideway.dev/v1alpha1
kind: Fleet
metadata: {name: kube-tier}
spec:
  clusters:
  - {name: cluster-hangzhou, region: east-china, zone: hangzhou-a, wave: 0, api: {kubeconfigContext: cluster-hangzhou}}
  - name: cluster-shanghai
    region: east-china
    zone: shanghai-a
    wave: 1
    api: {secretRef: {namespace: tideway-system, name: cluster-shanghai-kubeconfig}}
  - {name: cluster-beijing, region: north-china, zone: beijing-a, wave: 1}
"#
    .to_string()
}

/// The policy; `security` adds a PeerAuthentication (what the prune test
/// takes away again).
fn policy_yaml(security: bool) -> String {
    let security = if security {
        "  security: {mtls: STRICT}\n"
    } else {
        ""
    };
    format!(
        r#"
apiVersion: traffic.tideway.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: reviews, namespace: production}}
spec:
  fleet: kube-tier
  service: {{name: reviews, port: 9080}}
  destinations:
  - {{cluster: cluster-hangzhou, weight: 50}}
  - {{cluster: cluster-shanghai, weight: 30}}
  - {{cluster: cluster-beijing, weight: 20}}
{security}  callers:
  - namespace: production
  - namespace: frontend
    selector: {{app: productpage}}
  observability: {{prometheusRule: false}}
  plugin: {{image: "{IMAGE}"}}
"#
    )
}

fn policy_ref() -> PolicyRef {
    PolicyRef {
        name: "reviews".into(),
        namespace: "production".into(),
    }
}

fn compiled(security: bool) -> tideway_controller::Compiled {
    let policy = tideway_controller::load::policy_from_str(&policy_yaml(security), "policy")
        .expect("policy");
    let fleet = tideway_controller::load::fleet_from_str(&fleet_yaml(), "fleet").expect("fleet");
    tideway_controller::compile(&policy, &fleet, None).expect("compiles")
}

/// The fleet, plus the hub Secret with cluster-shanghai's kubeconfig.
async fn start() -> KubeFleet {
    let fleet = KubeFleet::start(MEMBERS).await;
    let secrets: Api<Secret> = Api::namespaced(fleet.hub.admin().await, "tideway-system");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "cluster-shanghai-kubeconfig"},
        "stringData": {"kubeconfig": fleet.member("cluster-shanghai").controller_kubeconfig_yaml()},
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("hub Secret");
    fleet
}

/// Roll `compiled` out as `tideway apply` does: the fleet's kubeconfig for
/// contexts, the hub (controller identity) for Secrets.
async fn roll_out(
    kube: &KubeFleet,
    compiled: &tideway_controller::Compiled,
    options: &Options,
) -> (FleetReport, Vec<Progress>) {
    let kubeconfig = Kubeconfig::read_from(kube.write_kubeconfig()).expect("kubeconfig");
    let fleet = tideway_controller::load::fleet_from_str(&fleet_yaml(), "fleet").expect("fleet");
    let hub = kube.hub.controller().await;
    let targets = apply::targets(compiled, &fleet, Some(&kubeconfig), Some(&hub)).await;
    let mut events = Vec::new();
    let report = {
        let mut record = |e: &Progress| events.push(e.clone());
        apply::apply(targets, &policy_ref(), options, &mut record).await
    };
    (report, events)
}

fn real() -> Options {
    Options {
        prune: true,
        ..Options::default()
    }
}

/// The object as the member stores it, read as the admin.
async fn live(kube: &KubeFleet, member: &str, object: &Value) -> Option<kube::api::DynamicObject> {
    let client = kube.member(member).admin().await;
    let api = dynamic_api(&client, object).await;
    api.get_opt(object["metadata"]["name"].as_str().expect("name"))
        .await
        .expect("read as admin")
}

fn status_text(report: &FleetReport, member: &str) -> String {
    format!("{:?}", report.member(member).map(|m| &m.status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_every_members_own_render_in_wave_order_and_again_changes_nothing() {
    let kube = start().await;
    let compiled = compiled(true);
    let (report, events) = roll_out(&kube, &compiled, &real()).await;
    for member in MEMBERS {
        assert_eq!(
            report.member(member).map(|m| &m.status),
            Some(&MemberStatus::Applied),
            "{member}: {report:#?}"
        );
    }
    // Waves in order, each closed by its gate before the next starts.
    let order: Vec<String> = events
        .iter()
        .map(|e| match e {
            Progress::WaveStarted { wave, .. } => format!("start {wave}"),
            Progress::MemberDone(m) => format!("done {}", m.member),
            Progress::WaveGate { wave, passed, .. } => format!("gate {wave} {passed}"),
            Progress::RolledBack { member, .. } => format!("rolled back {member}"),
        })
        .collect();
    assert_eq!(
        order[..3],
        ["start 0", "done cluster-hangzhou", "gate 0 true"],
        "{order:?}"
    );
    assert_eq!(order[3], "start 1", "{order:?}");
    assert_eq!(
        order.last().map(String::as_str),
        Some("gate 1 true"),
        "{order:?}"
    );

    // Every object is in its member, applied by the `tideway` manager, and
    // each member's WasmPlugins carry that member's own identity.
    for (member, objects) in compiled.members() {
        for object in &objects {
            let found = live(&kube, &member, object)
                .await
                .unwrap_or_else(|| panic!("{member}: {} missing", object["metadata"]["name"]));
            let managers: Vec<_> = found
                .metadata
                .managed_fields
                .iter()
                .flatten()
                .filter_map(|f| f.manager.clone())
                .collect();
            assert!(managers.contains(&"tideway".to_string()), "{managers:?}");
            if object["kind"] == "WasmPlugin" {
                assert_eq!(
                    found.data["spec"]["pluginConfig"]["local"]["cluster"], member,
                    "{member}"
                );
            }
        }
        let outcome = report.member(&member).expect("outcome");
        assert_eq!(
            outcome.count(&ObjectAction::Created),
            objects.len(),
            "{outcome:#?}"
        );
    }

    // The same render again: nothing changes anywhere.
    let (again, _) = roll_out(&kube, &compiled, &real()).await;
    for member in again.members.iter() {
        assert_eq!(member.status, MemberStatus::Applied, "{member:#?}");
        assert_eq!(
            member.count(&ObjectAction::Unchanged),
            member.objects.len(),
            "{member:#?}"
        );
        assert!(member.pruned.is_empty(), "{member:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_another_manager_owns_is_reported_with_field_and_manager_and_not_forced() {
    let kube = start().await;
    let compiled = compiled(false);
    let (first, _) = roll_out(&kube, &compiled, &real()).await;
    assert!(first.all_applied(), "{first:#?}");
    // Someone on call takes over the DestinationRule's host in beijing.
    let beijing = compiled.member("cluster-beijing");
    let rule = beijing
        .iter()
        .find(|o| o["kind"] == "DestinationRule")
        .expect("a DestinationRule");
    let theirs = json!({
        "apiVersion": rule["apiVersion"], "kind": "DestinationRule",
        "metadata": {"name": rule["metadata"]["name"], "namespace": rule["metadata"]["namespace"]},
        "spec": {"host": "reviews-hotfix.production.svc.cluster.local"},
    });
    let server = kube.member("cluster-beijing");
    server
        .apply_as(&server.admin().await, "oncall-hotfix", &theirs)
        .await;

    let (report, _) = roll_out(&kube, &compiled, &real()).await;
    match &report.member("cluster-beijing").expect("beijing").status {
        MemberStatus::Conflict {
            object, conflicts, ..
        } => {
            assert!(
                object.starts_with("DestinationRule production/"),
                "{object}"
            );
            assert!(
                conflicts
                    .iter()
                    .any(|c| c.manager == "oncall-hotfix" && c.field == ".spec.host"),
                "{conflicts:?}"
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Not forced: the other manager's value stands.
    let found = live(&kube, "cluster-beijing", rule).await.expect("rule");
    assert_eq!(
        found.data["spec"]["host"],
        "reviews-hotfix.production.svc.cluster.local"
    );
    // The others are unaffected.
    for member in ["cluster-hangzhou", "cluster-shanghai"] {
        assert_eq!(
            report.member(member).map(|m| &m.status),
            Some(&MemberStatus::Applied),
            "{report:#?}"
        );
    }
}

/// Every object of `renders` in `member` as stored (what Tideway and
/// others set, and with `versions` its resourceVersion), by identity;
/// `None` for one that is not there.
async fn stored(
    kube: &KubeFleet,
    member: &str,
    renders: &[&tideway_controller::Compiled],
    versions: bool,
) -> std::collections::BTreeMap<String, Option<Value>> {
    let mut out = std::collections::BTreeMap::new();
    for compiled in renders {
        for object in compiled.member(member) {
            let id = format!(
                "{} {}/{}",
                object["kind"].as_str().unwrap_or_default(),
                object["metadata"]["namespace"].as_str().unwrap_or_default(),
                object["metadata"]["name"].as_str().unwrap_or_default()
            );
            let found = live(kube, member, &object).await.map(|o| {
                json!({
                    "spec": o.data["spec"], "data": o.data["data"],
                    "labels": o.metadata.labels, "annotations": o.metadata.annotations,
                    "resourceVersion": if versions { o.metadata.resource_version } else { None },
                })
            });
            out.insert(id, found);
        }
    }
    out
}

/// The revisions `member`'s record names: (current, previous).
async fn record(kube: &KubeFleet, member: &str) -> (Option<String>, Option<String>) {
    let client = kube.member(member).admin().await;
    let record = apply::revisions::read(&client, &policy_ref())
        .await
        .expect("the record reads");
    (
        record.current.map(|r| r.revision),
        record.previous.map(|r| r.revision),
    )
}

/// `oncall` takes a field of `member`'s `kind` object (forced, as a
/// human's `kubectl apply --server-side --force-conflicts` would).
async fn take_over(
    kube: &KubeFleet,
    member: &str,
    compiled: &tideway_controller::Compiled,
    kind: &str,
    spec: Value,
) {
    let ours = compiled
        .member(member)
        .into_iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {member}'s render"));
    let theirs = json!({
        "apiVersion": ours["apiVersion"], "kind": kind,
        "metadata": {"name": ours["metadata"]["name"], "namespace": ours["metadata"]["namespace"]},
        "spec": spec,
    });
    let server = kube.member(member);
    server
        .apply_as(&server.admin().await, "oncall", &theirs)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_apply_of_the_current_revision_with_a_conflict_changes_nothing_in_the_member() {
    let kube = start().await;
    let (r1, r2) = (compiled(false), compiled(true));
    let (rev1, rev2) = (apply::revision(&r1), apply::revision(&r2));
    for render in [&r1, &r2] {
        let (report, _) = roll_out(&kube, render, &real()).await;
        assert!(report.all_applied(), "{report:#?}");
    }
    assert_eq!(
        record(&kube, "cluster-shanghai").await,
        (Some(rev2.clone()), Some(rev1.clone()))
    );
    // Someone on call relaxes mTLS in shanghai.
    take_over(
        &kube,
        "cluster-shanghai",
        &r2,
        "PeerAuthentication",
        json!({"mtls": {"mode": "PERMISSIVE"}}),
    )
    .await;
    let both = [&r1, &r2];
    let before: Vec<_> =
        futures::future::join_all(MEMBERS.iter().map(|m| stored(&kube, m, &both, true))).await;

    // The same revision again, twice (a retry): the conflict is reported,
    // and nothing changes anywhere — no rollback to the older revision, no
    // object deleted, the other manager's field stands.
    for _ in 0..2 {
        let (report, events) = roll_out(&kube, &r2, &real()).await;
        let shanghai = report.member("cluster-shanghai").expect("shanghai");
        match &shanghai.status {
            MemberStatus::Conflict {
                object, conflicts, ..
            } => {
                assert!(object.starts_with("PeerAuthentication "), "{object}");
                assert!(
                    conflicts
                        .iter()
                        .any(|c| c.manager == "oncall" && c.field == ".spec.mtls.mode"),
                    "{conflicts:?}"
                );
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(report.stopped_at_wave, Some(1), "{report:#?}");
        for member in ["cluster-shanghai", "cluster-beijing"] {
            let outcome = report.member(member).expect("member");
            assert_eq!(
                outcome.rollback,
                Some(Rollback::NothingToUndo),
                "{outcome:#?}"
            );
            assert_eq!(outcome.runs, Runs::Revision(rev2.clone()), "{outcome:#?}");
            assert_eq!(outcome.count(&ObjectAction::Created), 0, "{outcome:#?}");
            assert_eq!(outcome.count(&ObjectAction::Configured), 0, "{outcome:#?}");
        }
        let lines: Vec<String> = events.iter().map(apply::progress_line).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.trim() == "cluster-shanghai: nothing to undo"),
            "{lines:#?}"
        );
        let after: Vec<_> =
            futures::future::join_all(MEMBERS.iter().map(|m| stored(&kube, m, &both, true))).await;
        assert_eq!(before, after, "a member's objects changed");
        assert_eq!(
            record(&kube, "cluster-shanghai").await,
            (Some(rev2.clone()), Some(rev1.clone())),
            "the record still says what the member has"
        );
    }
    let shanghai = stored(&kube, "cluster-shanghai", &[&r2], false).await;
    let peer = shanghai
        .iter()
        .find(|(id, _)| id.starts_with("PeerAuthentication"))
        .and_then(|(_, o)| o.clone())
        .expect("the PeerAuthentication is still there");
    assert_eq!(peer["spec"]["mtls"]["mode"], "PERMISSIVE", "{peer}");
    let rule = shanghai
        .iter()
        .find(|(id, _)| id.starts_with("DestinationRule"))
        .and_then(|(_, o)| o.clone())
        .expect("the DestinationRule");
    assert_eq!(
        rule["spec"]["trafficPolicy"]["tls"]["mode"], "ISTIO_MUTUAL",
        "{rule}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wave_puts_each_member_back_exactly_where_it_was() {
    let kube = start().await;
    let (r1, r2) = (compiled(false), compiled(true));
    let (rev1, rev2) = (apply::revision(&r1), apply::revision(&r2));
    let (first, _) = roll_out(&kube, &r1, &real()).await;
    assert!(first.all_applied(), "{first:#?}");
    // In beijing someone owns the field R2 sets on the DestinationRule: its
    // rollout of R2 stops there, after the WasmPlugins took R2.
    take_over(
        &kube,
        "cluster-beijing",
        &r2,
        "DestinationRule",
        json!({"trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
    )
    .await;
    let shanghai_before = stored(&kube, "cluster-shanghai", &[&r1, &r2], false).await;
    let beijing_before = stored(&kube, "cluster-beijing", &[&r1, &r2], false).await;

    let (report, events) = roll_out(&kube, &r2, &real()).await;
    assert_eq!(report.stopped_at_wave, Some(1), "{report:#?}");
    // Wave 0 passed its gate and keeps R2.
    let hangzhou = report.member("cluster-hangzhou").expect("hangzhou");
    assert_eq!(hangzhou.status, MemberStatus::Applied);
    assert_eq!(hangzhou.runs, Runs::Revision(rev2.clone()));
    assert_eq!(
        record(&kube, "cluster-hangzhou").await,
        (Some(rev2.clone()), Some(rev1.clone()))
    );

    // The conflicting member: what this rollout changed before the
    // conflict is undone; it keeps what it had.
    let beijing = report.member("cluster-beijing").expect("beijing");
    assert!(
        matches!(&beijing.status, MemberStatus::Conflict { conflicts, .. }
            if conflicts.iter().any(|c| c.manager == "oncall" && c.field == ".spec.trafficPolicy.tls.mode")),
        "{beijing:#?}"
    );
    match &beijing.rollback {
        Some(Rollback::Restored {
            to,
            deleted,
            restored,
        }) => {
            assert_eq!(to, &Runs::Revision(rev1.clone()));
            assert!(deleted.is_empty(), "{deleted:?}");
            assert!(
                !restored.is_empty() && restored.iter().all(|o| o.starts_with("WasmPlugin ")),
                "{restored:?}"
            );
        }
        other => panic!("expected beijing restored, got {other:?}"),
    }
    assert_eq!(beijing.runs, Runs::Revision(rev1.clone()));
    assert_eq!(
        stored(&kube, "cluster-beijing", &[&r1, &r2], false).await,
        beijing_before
    );

    // The member that took all of R2: back exactly to R1 — what R2 changed
    // restored, what it created deleted, its record untouched.
    let shanghai = report.member("cluster-shanghai").expect("shanghai");
    assert_eq!(
        shanghai.status,
        MemberStatus::RolledBack {
            to: Runs::Revision(rev1.clone()),
            reason: "wave 1 failed its health gate at cluster-beijing".into(),
        }
    );
    match &shanghai.rollback {
        Some(Rollback::Restored { deleted, .. }) => assert!(
            deleted.iter().any(|o| o.starts_with("PeerAuthentication ")),
            "{deleted:?}"
        ),
        other => panic!("expected shanghai restored, got {other:?}"),
    }
    assert_eq!(shanghai.runs, Runs::Revision(rev1.clone()));
    assert_eq!(
        stored(&kube, "cluster-shanghai", &[&r1, &r2], false).await,
        shanghai_before
    );
    for member in ["cluster-shanghai", "cluster-beijing"] {
        assert_eq!(
            record(&kube, member).await,
            (Some(rev1.clone()), None),
            "{member}"
        );
    }
    let lines: Vec<String> = events.iter().map(apply::progress_line).collect();
    assert!(
        lines.iter().any(|l| l
            .trim()
            .starts_with(&format!("cluster-shanghai: rolled back to {rev1}"))),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_what_the_render_no_longer_has_and_nothing_else() {
    let kube = start().await;
    let with_security = compiled(true);
    let (first, _) = roll_out(&kube, &with_security, &real()).await;
    assert!(first.all_applied(), "{first:#?}");
    let peer_auth = with_security
        .member("cluster-hangzhou")
        .into_iter()
        .find(|o| o["kind"] == "PeerAuthentication")
        .expect("security renders a PeerAuthentication");
    // Look-alikes prune must leave: our labels but put there by someone
    // else, and the same kind for another policy.
    let server = kube.member("cluster-hangzhou");
    let admin = server.admin().await;
    let mut lookalike = peer_auth.clone();
    lookalike["metadata"]["name"] = json!("hand-made");
    server.apply_as(&admin, "someone-else", &lookalike).await;
    let mut other_policy = peer_auth.clone();
    other_policy["metadata"]["name"] = json!("tideway-ratings");
    other_policy["metadata"]["labels"]["traffic.tideway.dev/policy"] = json!("ratings");
    server.apply_as(&admin, "tideway", &other_policy).await;

    // Dry run first: says what it would delete, deletes nothing.
    let without = compiled(false);
    let dry = Options {
        dry_run: true,
        prune: true,
        ..Options::default()
    };
    let (preview, _) = roll_out(&kube, &without, &dry).await;
    let outcome = preview.member("cluster-hangzhou").expect("hangzhou");
    assert_eq!(
        outcome
            .pruned
            .iter()
            .map(|p| (p.object.as_str(), &p.action))
            .collect::<Vec<_>>(),
        vec![(
            "PeerAuthentication production/tideway-reviews",
            &ObjectAction::WouldDelete
        )],
        "{outcome:#?}"
    );
    assert!(live(&kube, "cluster-hangzhou", &peer_auth).await.is_some());

    let (report, _) = roll_out(&kube, &without, &real()).await;
    assert!(report.all_applied(), "{report:#?}");
    for member in MEMBERS {
        let outcome = report.member(member).expect("outcome");
        assert_eq!(
            outcome
                .pruned
                .iter()
                .map(|p| (p.object.as_str(), &p.action))
                .collect::<Vec<_>>(),
            vec![(
                "PeerAuthentication production/tideway-reviews",
                &ObjectAction::Deleted
            )],
            "{member}: {outcome:#?}"
        );
        assert!(live(&kube, member, &peer_auth).await.is_none(), "{member}");
    }
    assert!(live(&kube, "cluster-hangzhou", &lookalike).await.is_some());
    assert!(live(&kube, "cluster-hangzhou", &other_policy)
        .await
        .is_some());
    // What stays rendered stays.
    for object in without.member("cluster-hangzhou") {
        assert!(live(&kube, "cluster-hangzhou", &object).await.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_member_is_reported_and_the_others_roll_out() {
    let mut kube = start().await;
    let token = kube
        .member("cluster-shanghai")
        .controller_token
        .clone()
        .expect("token");
    kube.member_mut("cluster-shanghai").stop();
    let compiled = compiled(false);
    let started = std::time::Instant::now();
    let (report, _) = roll_out(&kube, &compiled, &real()).await;
    match &report.member("cluster-shanghai").expect("shanghai").status {
        MemberStatus::Unreachable { message } => {
            assert!(!message.contains(&token), "a credential in {message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
    for member in ["cluster-hangzhou", "cluster-beijing"] {
        assert_eq!(
            report.member(member).map(|m| &m.status),
            Some(&MemberStatus::Applied),
            "{report:#?}"
        );
    }
    assert_eq!(report.stopped_at_wave, None);
    // A refused connection is not waited out (the connect timeout is 5 s
    // and nothing should come near it).
    assert!(started.elapsed() < std::time::Duration::from_secs(60));

    // With --require-all the same outage fails its wave.
    let strict = Options {
        require_all: true,
        prune: true,
        ..Options::default()
    };
    let (strict_report, _) = roll_out(&kube, &compiled, &strict).await;
    assert_eq!(strict_report.stopped_at_wave, Some(1), "{strict_report:#?}");

    // A member whose kubeconfig Secret is gone is unreachable too, and the
    // report names the Secret.
    let secrets: Api<Secret> = Api::namespaced(kube.hub.admin().await, "tideway-system");
    secrets
        .delete("cluster-shanghai-kubeconfig", &Default::default())
        .await
        .expect("delete Secret");
    let (report, _) = roll_out(&kube, &compiled, &real()).await;
    match &report.member("cluster-shanghai").expect("shanghai").status {
        MemberStatus::Unreachable { message } => assert!(
            message.contains("Secret tideway-system/cluster-shanghai-kubeconfig")
                && message.contains("not found"),
            "{message}"
        ),
        other => panic!("expected unreachable, got {other:?}"),
    }
    assert_eq!(
        report.member("cluster-beijing").map(|m| &m.status),
        Some(&MemberStatus::Applied)
    );
}

/// Make `member` refuse WasmPlugins with priority > 5: its WasmPlugin CRD
/// gets a maximum, as a stricter admission policy would. The render uses
/// priority 10.
async fn refuse_priority_over_5(kube: &KubeFleet, member: &str) {
    kube_fixture::refuse_wasmplugin_priority_over_5(&kube.member(member).admin().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_rejects_an_object_is_reported_with_the_apis_message_others_unaffected() {
    let kube = start().await;
    refuse_priority_over_5(&kube, "cluster-beijing").await;
    let compiled = compiled(false);
    let (report, _) = roll_out(&kube, &compiled, &real()).await;
    let beijing = report.member("cluster-beijing").expect("beijing");
    match &beijing.status {
        MemberStatus::Rejected {
            object,
            code,
            message,
            ..
        } => {
            assert!(object.starts_with("WasmPlugin "), "{object}");
            assert_eq!(*code, 422);
            assert!(message.contains("spec.priority"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // The refused object stops that member; what came after was not sent,
    // and the outcome says so object by object.
    assert_eq!(
        beijing.objects[0].action,
        ObjectAction::Failed,
        "{beijing:#?}"
    );
    assert!(beijing.objects[1..]
        .iter()
        .all(|o| o.action == ObjectAction::NotAttempted));
    for object in &compiled.member("cluster-beijing") {
        assert!(live(&kube, "cluster-beijing", object).await.is_none());
    }
    // The earlier wave passed its gate and keeps the render.
    assert_eq!(
        report.member("cluster-hangzhou").map(|m| &m.status),
        Some(&MemberStatus::Applied),
        "{report:#?}"
    );
    // Beijing's wave failed: shanghai, in the same wave, had nothing of the
    // policy before this first rollout, and has nothing again.
    let shanghai = report.member("cluster-shanghai").expect("shanghai");
    assert!(
        matches!(
            &shanghai.status,
            MemberStatus::RolledBack {
                to: Runs::Nothing,
                ..
            }
        ),
        "{shanghai:#?}"
    );
    assert_eq!(shanghai.runs, Runs::Nothing);
    for object in &compiled.member("cluster-shanghai") {
        assert!(live(&kube, "cluster-shanghai", object).await.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_wave_stops_the_rollout_before_the_next_wave() {
    let kube = start().await;
    refuse_priority_over_5(&kube, "cluster-hangzhou").await;
    let compiled = compiled(false);
    let (report, events) = roll_out(&kube, &compiled, &real()).await;
    assert_eq!(report.stopped_at_wave, Some(0), "{report:#?}");
    assert!(events.contains(&Progress::WaveGate {
        wave: 0,
        passed: false,
        failed: vec!["cluster-hangzhou".into()],
        rolling_back: true,
    }));
    for member in ["cluster-shanghai", "cluster-beijing"] {
        assert!(
            matches!(
                report.member(member).map(|m| &m.status),
                Some(MemberStatus::Skipped { .. })
            ),
            "{}",
            status_text(&report, member)
        );
        for object in &compiled.member(member) {
            assert!(live(&kube, member, object).await.is_none(), "{member}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_the_diff_on_dry_run_then_rolls_out_and_exits_non_zero_when_a_member_is_missing(
) {
    let mut kube = start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.yaml");
    let fleet = dir.path().join("fleet.yaml");
    std::fs::write(&policy, policy_yaml(false)).expect("policy");
    std::fs::write(&fleet, fleet_yaml()).expect("fleet");
    let kubeconfig = kube.write_kubeconfig();
    let tideway = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tideway"))
            .arg("apply")
            .arg("-f")
            .arg(&policy)
            .arg("--fleet")
            .arg(&fleet)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--hub-context", "hub"])
            .args(extra)
            .output()
            .expect("run tideway");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = tideway(&["--dry-run"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("# cluster-shanghai: WasmPlugin production/tideway-reviews"),
        "{stdout}"
    );
    assert!(stdout.contains("+kind: WasmPlugin"), "{stdout}");
    assert!(stderr.contains("cluster-beijing: dry run:"), "{stderr}");
    let plugin = compiled(false).member("cluster-beijing")[0].clone();
    assert!(
        live(&kube, "cluster-beijing", &plugin).await.is_none(),
        "dry run stored it"
    );

    let (code, _, stderr) = tideway(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    for line in [
        "wave 0: cluster-hangzhou",
        "wave 0: healthy",
        "wave 1: healthy",
    ] {
        assert!(stderr.contains(line), "{line:?} in {stderr}");
    }
    assert!(stderr.contains("cluster-beijing: applied:"), "{stderr}");
    assert!(live(&kube, "cluster-beijing", &plugin).await.is_some());

    // Nothing to change now: the dry run shows no diff.
    let (code, stdout, _) = tideway(&["--dry-run"]);
    assert_eq!(code, Some(0));
    assert!(!stdout.contains("+kind"), "{stdout}");

    // `tideway status` from the same files: every member at the render's
    // revision; no controller (nothing runs `tideway run` here).
    let status = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tideway"))
            .arg("status")
            .arg("-f")
            .arg(&policy)
            .arg("--fleet")
            .arg(&fleet)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--hub-context", "hub", "-o", "json"])
            .output()
            .expect("run tideway status");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let report: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), report)
    };
    let (code, report) = status();
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["revisionSource"], "render");
    assert_eq!(
        report["expectedRevision"],
        apply::revision(&compiled(false)).as_str()
    );
    assert_eq!(report["controller"], Value::Null);
    for member in MEMBERS {
        let m = report["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == *member))
            .expect("member");
        assert_eq!(m["revision"], report["expectedRevision"], "{m:#}");
        // No Endpoints object in these members: unknown, not a problem.
        assert_eq!(m["endpoints"]["ready"], Value::Null, "{m:#}");
    }
    // An object deleted behind Tideway's back is missing.
    let rule = compiled(false)
        .member("cluster-hangzhou")
        .into_iter()
        .find(|o| o["kind"] == "DestinationRule")
        .expect("a DestinationRule");
    let admin = kube.member("cluster-hangzhou").admin().await;
    dynamic_api(&admin, &rule)
        .await
        .delete("tideway-reviews", &Default::default())
        .await
        .expect("delete by hand");
    let (code, report) = status();
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(
        report["problems"],
        json!(["cluster-hangzhou: DestinationRule production/tideway-reviews is missing"]),
        "{report:#}"
    );

    kube.member_mut("cluster-beijing").stop();
    let (code, _, stderr) = tideway(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cluster-beijing: UNREACHABLE"), "{stderr}");
    assert!(stderr.contains("2 of 3 member(s) applied"), "{stderr}");
    let (code, report) = status();
    assert_eq!(code, Some(1), "{report:#}");
    assert!(
        report["problems"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p
                .as_str()
                .is_some_and(|p| p.starts_with("cluster-beijing: API unreachable: ")))),
        "{report:#}"
    );
}
