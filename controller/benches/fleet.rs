//! The fleet benchmark (not a test): what the controller's work costs at
//! scale. Prints a table.
//!
//! 1. Render + diff, in process, no server: 100 TrafficPolicies (one
//!    service each, 10 destinations) for a Fleet of 10 members — compile,
//!    revision, and the `--dry-run` diff of every member's every object
//!    against the render before a weight edit. Time per pass (median of
//!    several) and the process's peak RSS.
//! 2. The controller with 1,000 policies, on real API servers (the kube
//!    tier's fixture: etcd, a hub and members): `tideway run` (the binary)
//!    rolls all of them out, then resyncs every `--resync` through
//!    `--quiet-minutes` in which nothing changes; then `--edits` hand edits
//!    in the members, each timed until repaired or reported. The table
//!    shows the time until all are Ready, the controller's writes to the
//!    members in each quiet minute (counted from the members' audit logs,
//!    not the controller's counters), the edits' times, and the
//!    controller's peak RSS.
//!
//! ```sh
//! cargo bench -p tideway-controller --bench fleet                  # both
//! cargo bench -p tideway-controller --bench fleet -- --render-only
//! cargo bench -p tideway-controller --bench fleet -- --policies 200 --quiet-minutes 2
//! ```

#[path = "../tests/kube_fixture/mod.rs"]
mod kube_fixture;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tideway_controller::api::TrafficPolicy;

const IMAGE: &str = "registry.example.com/tideway/filter@sha256:d9b3ffabde57d6c94660e7ae683aa14bda1f5820614b9f6d4f8ccc0b2684f01e";

struct Options {
    render_only: bool,
    policies: usize,
    members: usize,
    /// Quiet minutes after every policy is Ready, each one's writes counted.
    quiet_minutes: usize,
    resync: u64,
    /// Hand edits of each kind (a deletion, a take-over) timed.
    edits: usize,
}

fn options() -> Options {
    let mut o = Options {
        render_only: false,
        policies: 1000,
        members: 2,
        quiet_minutes: 6,
        resync: 60,
        edits: 5,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).and_then(|v| v.parse().ok());
        match args[i].as_str() {
            "--render-only" => o.render_only = true,
            "--policies" => o.policies = value().unwrap_or(o.policies as u64) as usize,
            "--members" => o.members = value().unwrap_or(o.members as u64) as usize,
            "--quiet-minutes" => {
                o.quiet_minutes = value().unwrap_or(o.quiet_minutes as u64) as usize
            }
            "--edits" => o.edits = value().unwrap_or(o.edits as u64) as usize,
            "--resync" => o.resync = value().unwrap_or(o.resync),
            _ => {}
        }
        i += 1;
    }
    o
}

/// `VmHWM` (peak resident set) of a process, in MiB.
fn peak_rss_mib(pid: &str) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// A size line of `/proc/PID/status` (`VmHWM:`, `VmRSS:`), in MiB.
fn status_mib(pid: &str, field: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after ")".
    // SAFETY: sysconf has no preconditions.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    };
    (ticks(11) + ticks(12)) / hz
}

fn fleet_object(members: usize) -> Value {
    let clusters: Vec<Value> = (0..members)
        .map(|i| {
            json!({"name": format!("member-{i:02}"), "region": format!("region-{}", i / 2),
                   "zone": format!("zone-{i}"), "wave": i % 3,
                   "api": {"secretRef": {"namespace": "tideway-system", "name": format!("member-{i:02}-kubeconfig")}}})
        })
        .collect();
    json!({"apiVersion": "traffic.tideway.dev/v1alpha1", "kind": "Fleet",
           "metadata": {"name": "bench"}, "spec": {"clusters": clusters}})
}

fn policy_object(index: usize, members: usize, first_weight: u32) -> Value {
    let destinations: Vec<Value> = (0..members)
        .map(|i| {
            json!({"cluster": format!("member-{i:02}"),
                   "weight": if i == 0 { first_weight } else { 10 + i as u32 }})
        })
        .collect();
    json!({
        "apiVersion": "traffic.tideway.dev/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": format!("svc-{index:04}"), "namespace": "production"},
        "spec": {
            "fleet": "bench",
            "service": {"name": format!("svc-{index:04}"), "port": 8080},
            "destinations": destinations,
            "callers": [{"namespace": "production"}],
            "observability": {"prometheusRule": false, "dashboard": false},
            "plugin": {"image": IMAGE},
        }
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn render_and_diff() -> Vec<(String, String)> {
    use tideway_controller::apply::diff;
    const SERVICES: usize = 100;
    const MEMBERS: usize = 10;
    const PASSES: usize = 5;
    let fleet: tideway_controller::api::Fleet =
        serde_json::from_value(fleet_object(MEMBERS)).expect("fleet");
    let parse = |v: Value| -> TrafficPolicy { serde_json::from_value(v).expect("policy") };
    let before: Vec<TrafficPolicy> = (0..SERVICES)
        .map(|i| parse(policy_object(i, MEMBERS, 50)))
        .collect();
    let after: Vec<TrafficPolicy> = (0..SERVICES)
        .map(|i| parse(policy_object(i, MEMBERS, 70)))
        .collect();
    let (mut compile_s, mut diff_s) = (Vec::new(), Vec::new());
    let (mut objects, mut diff_bytes) = (0, 0);
    for _ in 0..PASSES {
        let started = Instant::now();
        let mut renders = Vec::new();
        for policy in &after {
            let compiled = tideway_controller::compile(policy, &fleet, None).expect("compiles");
            let _ = tideway_controller::apply::revision(&compiled);
            renders.push(compiled);
        }
        compile_s.push(started.elapsed().as_secs_f64());
        let old: Vec<_> = before
            .iter()
            .map(|p| tideway_controller::compile(p, &fleet, None).expect("compiles"))
            .collect();
        let started = Instant::now();
        objects = 0;
        diff_bytes = 0;
        for (new, old) in renders.iter().zip(&old) {
            for (member, new_objects) in new.members() {
                let old_objects = old.member(&member);
                for (n, o) in new_objects.iter().zip(&old_objects) {
                    let text = diff::unified("object", &diff::comparable(o), &diff::comparable(n));
                    objects += 1;
                    diff_bytes += text.len();
                }
            }
        }
        diff_s.push(started.elapsed().as_secs_f64());
    }
    vec![
        (
            format!("render {SERVICES} services × {MEMBERS} members (compile + revision)"),
            format!("{:.1} ms (median of {PASSES})", median(compile_s) * 1e3),
        ),
        (
            format!(
                "diff every member's objects ({objects} objects, {} KiB of diff)",
                diff_bytes / 1024
            ),
            format!("{:.1} ms (median of {PASSES})", median(diff_s) * 1e3),
        ),
        (
            "peak RSS of the benchmark process".to_string(),
            format!("{:.1} MiB", peak_rss_mib("self")),
        ),
    ]
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The controller's writes to each member so far, from the members' own
/// audit logs.
fn member_writes(kube: &kube_fixture::KubeFleet, names: &[String]) -> usize {
    names
        .iter()
        .map(|n| kube.member(n).controller_writes().len())
        .sum()
}

/// The controller's requests to each member so far, by verb.
fn member_requests(
    kube: &kube_fixture::KubeFleet,
    names: &[String],
) -> std::collections::BTreeMap<String, usize> {
    let mut by_verb = std::collections::BTreeMap::new();
    for name in names {
        for request in kube.member(name).controller_requests() {
            *by_verb.entry(request.verb).or_insert(0) += 1;
        }
    }
    by_verb
}

/// Established TCP connections of process `pid`, by remote port.
fn connections(pid: u32) -> std::collections::BTreeMap<u16, usize> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                let link = link.to_string_lossy().to_string();
                if let Some(inode) = link
                    .strip_prefix("socket:[")
                    .and_then(|l| l.strip_suffix(']'))
                {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut by_port = std::collections::BTreeMap::new();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // local, remote (hex ip:port), state (01: established), …, inode.
        let (Some(remote), Some(state), Some(inode)) =
            (fields.get(2), fields.get(3), fields.get(9))
        else {
            continue;
        };
        if *state != "01" || !inodes.contains(*inode) {
            continue;
        }
        if let Some(port) = remote
            .split(':')
            .nth(1)
            .and_then(|p| u16::from_str_radix(p, 16).ok())
        {
            *by_port.entry(port).or_insert(0) += 1;
        }
    }
    by_port
}

fn spread(samples: &[Duration]) -> String {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let all: Vec<String> = ms.iter().map(|m| format!("{m:.0}")).collect();
    format!(
        "max {:.0} ms, median {:.0} ms ({} samples: {} ms)",
        ms.last().copied().unwrap_or(0.0),
        median(ms.clone()),
        ms.len(),
        all.join(", ")
    )
}

async fn reconcile_loop(o: &Options) -> Vec<(String, String)> {
    let names: Vec<String> = (0..o.members).map(|i| format!("member-{i:02}")).collect();
    let (kube, admin) = start_fleet(&names, o).await;
    let port = kube_fixture::free_port();
    let mut child = spawn_controller(&kube, o, port);
    let pid = child.id();
    let started = Instant::now();
    for i in 0..o.policies {
        kube.hub
            .apply_as(&admin, "bench", &policy_object(i, o.members, 50))
            .await;
    }
    let created = started.elapsed();
    let policies: Api<TrafficPolicy> = Api::namespaced(admin.clone(), "production");
    wait_all_ready(&policies, o.policies).await;
    let converged = started.elapsed();
    let writes_at_ready = member_writes(&kube, &names);
    let scrape = || async {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default()
    };
    let count = |text: &str, result: &str| {
        metric(
            text,
            &format!("tideway_controller_reconciles_total{{result=\"{result}\"}}"),
        )
    };
    let results = ["applied", "unchanged", "degraded", "yielded"];

    // The quiet minutes: nothing changes anywhere; every resync must find
    // nothing to repair and send nothing.
    let mut per_minute = Vec::new();
    let text = scrape().await;
    let before: Vec<f64> = results.iter().map(|r| count(&text, r)).collect();
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    let mut writes = writes_at_ready;
    let requests_before = member_requests(&kube, &names);
    for _ in 0..o.quiet_minutes {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let now = member_writes(&kube, &names);
        per_minute.push(now - writes);
        writes = now;
    }
    let text = scrape().await;
    let (cpu1, window) = (cpu_seconds(pid), t0.elapsed());
    let quiet_rss = status_mib(&pid.to_string(), "VmRSS:");
    let requests_after = member_requests(&kube, &names);
    let quiet_requests: Vec<String> = requests_after
        .iter()
        .map(|(verb, n)| (verb, n - requests_before.get(verb).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .map(|(verb, n)| format!("{n} {verb}"))
        .collect();
    let open = connections(pid);
    let per_member: Vec<String> = names
        .iter()
        .map(|n| {
            let server = kube.member(n);
            format!("{n} {}", open.get(&server.port).copied().unwrap_or(0))
        })
        .chain(std::iter::once(format!(
            "hub {}",
            open.get(&kube.hub.port).copied().unwrap_or(0)
        )))
        .collect();
    let reconciles: Vec<String> = results
        .iter()
        .zip(&before)
        .map(|(r, b)| format!("{} {r}", count(&text, r) - b))
        .collect();

    let (put_back, reported) = hand_edits(&kube, &names, &policies, o).await;
    let peak = peak_rss_mib(&pid.to_string());
    let _ = child.kill();
    let _ = child.wait();
    if std::env::var_os("TIDEWAY_BENCH_LOG").is_some() {
        let kept = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/fleet-bench-controller.log");
        let _ = std::fs::copy(kube.dir.path().join("controller.err"), &kept);
        println!("controller log: {}", kept.display());
    }
    let p = o.policies;
    let m = o.members;
    let minutes: Vec<String> = per_minute.iter().map(|n| n.to_string()).collect();
    vec![
        (
            format!("{p} policies × {m} members: created in the hub"),
            format!("{:.1} s", created.as_secs_f64()),
        ),
        (
            format!("{p} policies × {m} members: all Ready (from the first create)"),
            format!("{:.1} s", converged.as_secs_f64()),
        ),
        (
            "controller writes to members until all Ready (audit logs)".to_string(),
            format!("{writes_at_ready}"),
        ),
        (
            format!(
                "controller writes to members in each quiet minute after (resync {}s)",
                o.resync
            ),
            minutes.join(", "),
        ),
        (
            "controller requests of any kind to members in those minutes".to_string(),
            if quiet_requests.is_empty() {
                "none".to_string()
            } else {
                quiet_requests.join(", ")
            },
        ),
        (
            format!("reconciles in those {:.0} s", window.as_secs_f64()),
            reconciles.join(", "),
        ),
        (
            "controller's open connections, per API server".to_string(),
            per_member.join(", "),
        ),
        (
            "controller CPU in those minutes".to_string(),
            format!("{:.2} s in {:.0} s", cpu1 - cpu0, window.as_secs_f64()),
        ),
        (
            "VirtualService deleted by hand → put back".to_string(),
            spread(&put_back),
        ),
        (
            "DestinationRule field taken by hand → FieldConflict in the status".to_string(),
            spread(&reported),
        ),
        (
            "controller RSS after the quiet minutes".to_string(),
            format!("{quiet_rss:.1} MiB"),
        ),
        (
            "controller peak RSS (whole run)".to_string(),
            format!("{peak:.1} MiB"),
        ),
    ]
}

/// The hub and `names` as members: each member's kubeconfig Secret, the
/// namespace and the Fleet in the hub.
async fn start_fleet(names: &[String], o: &Options) -> (kube_fixture::KubeFleet, kube::Client) {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let kube = kube_fixture::KubeFleet::start(&refs).await;
    let admin = kube.hub.admin().await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "tideway-system");
    for name in names {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-kubeconfig")},
            "stringData": {"kubeconfig": kube.member(name).controller_kubeconfig_yaml()},
        }))
        .expect("secret");
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("hub Secret");
    }
    kube.hub.create_namespace(&admin, "production").await;
    kube.hub
        .apply_as(&admin, "bench", &fleet_object(o.members))
        .await;
    (kube, admin)
}

/// `tideway run` against the fixture's hub, its probes and metrics on `port`.
fn spawn_controller(kube: &kube_fixture::KubeFleet, o: &Options, port: u16) -> std::process::Child {
    let log = kube.dir.path().join("controller.log");
    std::process::Command::new(env!("CARGO_BIN_EXE_tideway"))
        .arg("run")
        .arg("--kubeconfig")
        .arg(kube.write_kubeconfig())
        .args(["--context", "hub", "--identity", "bench"])
        .args(["--resync", &format!("{}s", o.resync)])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        // TIDEWAY_BENCH_LOG: the controller's RUST_LOG (its log is in the
        // fixture's directory).
        .env(
            "RUST_LOG",
            std::env::var("TIDEWAY_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(kube.dir.path().join("controller.err")).expect("log"))
        .spawn()
        .expect("tideway run")
}

/// Until each of the `n` policies says Ready for its generation.
async fn wait_all_ready(policies: &Api<TrafficPolicy>, n_policies: usize) {
    let ready = |p: &TrafficPolicy| {
        p.status.as_ref().is_some_and(|s| {
            s.observed_generation == p.metadata.generation
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let list = policies.list(&Default::default()).await.expect("list");
        let n = list.items.iter().filter(|p| ready(p)).count();
        if n == n_policies {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {} Ready after 30 min",
            n_policies
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Hand edits in the members: a deletion (put back) and a forced take-over
/// of a field (reported as a conflict, never forced back). How long each
/// took to be put back, and to be reported.
async fn hand_edits(
    kube: &kube_fixture::KubeFleet,
    names: &[String],
    policies: &Api<TrafficPolicy>,
    o: &Options,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut put_back, mut reported) = (Vec::new(), Vec::new());
    for i in 0..o.edits {
        let member = kube.member(&names[0]);
        let service = format!("svc-{:04}", (i * 97) % o.policies);
        let object = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                            "metadata": {"name": format!("tideway-{service}"), "namespace": "production"}});
        let api = kube_fixture::dynamic_api(&member.admin().await, &object).await;
        let name = format!("tideway-{service}");
        api.delete(&name, &Default::default())
            .await
            .expect("delete");
        let t = Instant::now();
        while !matches!(api.get_opt(&name).await, Ok(Some(_))) {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "{name} never put back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        put_back.push(t.elapsed());

        let member = kube.member(&names[o.members - 1]);
        let service = format!("svc-{:04}", (i * 97 + 13) % o.policies);
        let theirs = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                            "metadata": {"name": format!("tideway-{service}"), "namespace": "production"},
                            "spec": {"host": format!("{service}-hotfix.production.svc.cluster.local")}});
        member
            .apply_as(&member.admin().await, "oncall", &theirs)
            .await;
        let t = Instant::now();
        loop {
            let p = policies.get(&service).await.expect("policy");
            let conflict = p.status.iter().flat_map(|s| &s.members).any(|m| {
                m.name == names[o.members - 1]
                    && m.conditions
                        .iter()
                        .any(|c| c.type_ == "Degraded" && c.reason == "FieldConflict")
            });
            if conflict {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "{service}: no conflict reported"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        reported.push(t.elapsed());
    }
    (put_back, reported)
}

fn print_table(rows: &[(String, String)]) {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<width$}  {v}");
    }
}

fn main() {
    let o = options();
    println!("## render + diff (in process)");
    print_table(&render_and_diff());
    if o.render_only {
        return;
    }
    println!(
        "\n## steady-state reconcile (tideway run against a hub and {} member kube-apiservers)",
        o.members
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    print_table(&runtime.block_on(reconcile_loop(&o)));
}
