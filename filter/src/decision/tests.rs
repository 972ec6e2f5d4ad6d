//! The engine's behaviour through its public calls and its internals.

use super::engine::Engine;
use super::memory::{MemoryHost, MemoryStore};
use super::request::StreamEvent;
use super::{LocalIdentity, Outcome, Reason};
use crate::config::PluginConfig;
use crate::header_map::{self, HeaderMap};
use crate::health::HealthEvent;
use crate::shared_stats::{self, SharedStats};
use std::collections::HashMap;

const MS: u64 = 1_000_000;

fn engine(json: &str) -> Engine {
    let config = PluginConfig::from_json(json.as_bytes()).expect("valid config");
    Engine::new(
        config,
        LocalIdentity {
            cluster: "local".into(),
            locality: Some("r1/z1".into()),
            namespace: None,
        },
        42,
        None,
    )
}

fn three(weights: &str, extra: &str) -> String {
    format!(
        r#"{{"services":[{{"name":"svc","hosts":["svc.local"],{extra}
        "destinations":[{{"name":"a","weight":70,"locality":"r1/z1"}},{{"name":"b","weight":20,"locality":"r1/z2"}},{{"name":"c","weight":10,"locality":"r2/z1"}}]}}],
        "scheduler":{{"weights":{weights}}}}}"#
    )
}

/// `three` with every source trusted, for tests that name a destination.
fn trusting(weights: &str, extra: &str) -> String {
    let mut config = three(weights, extra);
    config.insert_str(1, r#""trust":{"allSources":true},"#);
    config
}

fn static_weights() -> &'static str {
    r#"{"latency":0,"load":0,"cost":0,"affinity":0}"#
}

#[test]
fn static_split_is_exact_within_a_tenth_of_a_point() {
    let mut e = engine(&three(static_weights(), ""));
    let mut counts = [0u32; 3];
    let n = 100_000;
    for i in 0..n {
        let d = e.decide(0, None, i);
        assert_eq!(d.reason, Reason::Static);
        counts[d.destination.expect("chosen")] += 1;
    }
    for (c, w) in counts.iter().zip([70.0, 20.0, 10.0]) {
        let pct = f64::from(*c) / f64::from(n as u32) * 100.0;
        assert!((pct - w).abs() <= 0.1, "{pct} vs {w}: {counts:?}");
    }
    // Exact over any window of 100 (the weights' total), interleaved.
    let window: Vec<usize> = (0..100)
        .filter_map(|i| e.decide(0, None, i).destination)
        .collect();
    assert_eq!(window.iter().filter(|d| **d == 2).count(), 10);
    assert!(
        window.windows(2).filter(|w| w[0] == 2 && w[1] == 2).count() == 0,
        "{window:?}"
    );
}

#[test]
fn slow_destination_loses_most_traffic() {
    let mut e = engine(&three(
        r#"{"latency":1,"load":0,"cost":0,"affinity":0}"#,
        "",
    ));
    // Equalise the weights so the effect is the latency's alone.
    for d in &mut e.services[0].destinations {
        d.weight = 1.0;
    }
    let mut now = 0;
    let mut counts = [0u32; 3];
    for i in 0..20_000u64 {
        now += MS / 10;
        let d = e.decide(0, None, now).destination.expect("chosen");
        counts[d] += 1;
        let latency = if d == 2 { 50 * MS } else { 5 * MS };
        e.begin(0, d);
        e.observe(0, d, Outcome::Status(200), Some(latency), now);
        e.end(0, d);
        let _ = i;
    }
    let share = f64::from(counts[2]) / 20_000.0;
    assert!(share < 0.05, "slow share {share}: {counts:?}");
    assert!(counts[2] > 0, "the slow one is still probed");
}

/// Power of two choices draws two *different* candidates: drawn with
/// replacement, a destination that loses every comparison was still chosen
/// whenever it was drawn twice (its effective weight's share squared:
/// ~0.35% here, 3% of the tail-setting requests at 6×).
#[test]
fn a_dominated_destination_is_not_chosen_by_drawing_it_twice() {
    let mut e = engine(&three(
        r#"{"latency":1,"load":0,"cost":0,"affinity":0}"#,
        "",
    ));
    for d in &mut e.services[0].destinations {
        d.weight = 1.0;
    }
    // Measured at once; then no decision comes near the half-life, so no
    // re-measurement is due.
    for (d, ms) in [(0, 5), (1, 5), (2, 15)] {
        e.observe(0, d, Outcome::Status(200), Some(ms * MS), 1);
    }
    let mut counts = [0u32; 3];
    for t in 0..50_000u64 {
        let d = e
            .decide(0, None, 2 + t * 10_000)
            .destination
            .expect("chosen");
        counts[d] += 1;
    }
    assert_eq!(counts[2], 0, "{counts:?}");
    assert!(counts[0] > 20_000 && counts[1] > 20_000, "{counts:?}");
}

/// An idle estimate must not decay toward zero: a slow destination
/// starved for a few seconds would look fast again and draw a burst. It
/// holds instead, and the destination is re-measured by a single request
/// per half-life.
#[test]
fn a_shunned_slow_destination_is_remeasured_not_assumed_fast() {
    let mut e = engine(&three(
        r#"{"latency":1,"load":0,"cost":0,"affinity":0}"#,
        "",
    ));
    for d in &mut e.services[0].destinations {
        d.weight = 1.0;
    }
    let mut now = 0;
    let mut per_second = vec![[0u32; 3]; 30];
    for _ in 0..30_000u64 {
        now += MS;
        let d = e.decide(0, None, now).destination.expect("chosen");
        per_second[(now / (1000 * MS)).min(29) as usize][d] += 1;
        let latency = if d == 2 { 50 * MS } else { 5 * MS };
        e.begin(0, d);
        e.observe(0, d, Outcome::Status(200), Some(latency), now);
        e.end(0, d);
    }
    for (second, counts) in per_second.iter().enumerate() {
        assert!(
            counts[2] <= 3,
            "second {second}: the slow one got {} of {}: {per_second:?}",
            counts[2],
            counts.iter().sum::<u32>()
        );
    }
    let remeasured: u32 = per_second.iter().map(|c| c[2]).sum();
    assert!(
        remeasured >= 8,
        "re-measured about every 3.5 s: {remeasured}"
    );
    let slow = &e.services[0].destinations[2].latency;
    assert_eq!(slow.estimate_ns(), 50.0 * MS as f64);
}

#[test]
fn an_unmeasured_destination_is_not_taken_for_the_best() {
    let mut e = engine(&three(
        r#"{"latency":1,"load":0,"cost":0,"affinity":0}"#,
        "",
    ));
    for d in &mut e.services[0].destinations {
        d.weight = 1.0;
    }
    for d in [0, 1] {
        e.observe(0, d, Outcome::Status(200), Some(5 * MS), 1);
    }
    // c has never answered; its first request stays in flight.
    let mut counts = [0u32; 3];
    for t in 0..3000 {
        let d = e.decide(0, None, 2 + t).destination.expect("chosen");
        e.begin(0, d);
        counts[d] += 1;
    }
    assert!(
        (1..=30).contains(&counts[2]),
        "one request to measure it, then scored at the default 30 ms: {counts:?}"
    );
}

#[test]
fn session_sticks_and_only_fails_over_when_ejected() {
    let mut e = engine(&three(
        r#"{"latency":1,"load":1,"cost":0,"affinity":0}"#,
        r#""affinity":{"source":"header","name":"x-user"},"#,
    ));
    let first = e.decide(0, Some(b"alice"), 0);
    assert_eq!(first.reason, Reason::Affinity);
    for t in 0..100 {
        assert_eq!(
            e.decide(0, Some(b"alice"), t).destination,
            first.destination
        );
    }
    let home = first.destination.expect("chosen");
    e.services[0].destinations[home].health.ejected_until_ns = 1000;
    let moved = e.decide(0, Some(b"alice"), 10);
    assert_eq!(moved.reason, Reason::Failover);
    assert_ne!(moved.destination, first.destination);
    assert_eq!(
        e.decide(0, Some(b"alice"), 1000).destination,
        first.destination
    );
}

#[test]
fn failing_destination_is_ejected_and_traffic_fails_over_by_locality() {
    let mut e = engine(&three(static_weights(), ""));
    for _ in 0..5 {
        e.observe(0, 0, Outcome::Status(503), Some(MS), 0);
    }
    assert!(e.services[0].destinations[0].health.is_ejected(1));
    let mut counts = HashMap::new();
    for t in 0..10_000 {
        let d = e.decide(0, None, t + 1);
        *counts.entry((d.destination, d.reason)).or_insert(0) += 1;
    }
    assert_eq!(counts.get(&(Some(0), Reason::Static)), None, "{counts:?}");
    assert_eq!(counts.get(&(Some(0), Reason::Failover)), None, "{counts:?}");
    // a's share fails over to b (same region), not c (other region).
    assert!(
        counts
            .get(&(Some(1), Reason::Failover))
            .copied()
            .unwrap_or(0)
            > 6500,
        "{counts:?}"
    );
    assert_eq!(counts.get(&(Some(2), Reason::Failover)), None, "{counts:?}");
}

const PROBE: &str =
    r#""probe":{"cluster":"outbound|80|{destination}|svc.local","path":"/healthz"},"#;

/// Eject destination a (index 0) by a streak of 503s at time 0.
fn eject_a(e: &mut Engine) -> u64 {
    for _ in 0..5 {
        e.observe(0, 0, Outcome::Status(503), Some(MS), 0);
    }
    e.services[0].destinations[0].health.ejected_until_ns
}

#[test]
fn with_active_probing_a_returning_destination_waits_for_a_passing_probe() {
    let mut e = engine(&three(static_weights(), PROBE));
    assert_eq!(
        e.services[0].destinations[0]
            .probe
            .as_ref()
            .map(|p| p.cluster.as_str()),
        Some("outbound|80|a|svc.local")
    );
    let until = eject_a(&mut e);
    assert_eq!(e.probes_due(until - 1).count(), 0, "still ejected");
    // The ejection is over, but no client request goes there: a probe does.
    assert!(e.services[0].destinations[0].is_blocked(until));
    assert_eq!(e.probes_due(until).collect::<Vec<_>>(), vec![(0, 0)]);
    e.probe_dispatched(0, 0, true);
    assert_eq!(e.probes_due(until).count(), 0, "one probe at a time");
    // It fails: ejected again, twice as long, and no client paid for it.
    let again = match e.probe_result(0, 0, false, until + MS) {
        HealthEvent::Ejected { until_ns } => until_ns,
        other => panic!("{other:?}"),
    };
    assert_eq!(again, until + MS + 2000 * MS);
    for t in [until, again - 1, again] {
        assert!(e.services[0].destinations[0].is_blocked(t), "at {t}");
    }
    // The next probe passes: clients may go there again.
    assert_eq!(e.probes_due(again).collect::<Vec<_>>(), vec![(0, 0)]);
    e.probe_dispatched(0, 0, true);
    assert_eq!(e.probe_result(0, 0, true, again + MS), HealthEvent::None);
    assert!(!e.services[0].destinations[0].is_blocked(again + MS));
    assert_eq!(e.probes_due(again + MS).count(), 0);
}

#[test]
fn a_probe_that_cannot_be_sent_falls_back_to_a_client_request() {
    let mut e = engine(&three(static_weights(), PROBE));
    let until = eject_a(&mut e);
    e.probe_dispatched(0, 0, false);
    assert!(!e.services[0].destinations[0].is_blocked(until));
    assert_eq!(e.probes_due(until).count(), 0);
}

#[test]
fn a_probe_answer_for_a_replaced_ejection_is_ignored() {
    let mut e = engine(&three(static_weights(), PROBE));
    let until = eject_a(&mut e);
    e.probe_dispatched(0, 0, true);
    // Meanwhile another worker's newer ejection is adopted.
    let newer = until + 5000 * MS;
    e.services[0].destinations[0]
        .health
        .merge_ejection(newer, 2, 0);
    assert_eq!(e.probe_result(0, 0, true, until + MS), HealthEvent::None);
    assert!(e.services[0].destinations[0].is_blocked(newer));
    assert_eq!(e.probes_due(newer).collect::<Vec<_>>(), vec![(0, 0)]);
}

#[test]
fn without_a_probe_config_no_probe_is_ever_due() {
    let mut e = engine(&three(static_weights(), ""));
    let until = eject_a(&mut e);
    assert_eq!(e.probes_due(until).count(), 0);
    assert!(!e.services[0].destinations[0].is_blocked(until));
}

#[test]
fn a_returning_destination_gets_one_probe_at_a_time() {
    let mut e = engine(&three(static_weights(), ""));
    for _ in 0..5 {
        e.observe(0, 0, Outcome::Status(503), Some(MS), 0);
    }
    let back = 1000 * MS;
    let probe = loop {
        let d = e.decide(0, None, back);
        if d.destination == Some(0) {
            break d;
        }
    };
    assert_eq!(probe.reason, Reason::Static);
    e.begin(0, 0);
    for _ in 0..1000 {
        assert_ne!(
            e.decide(0, None, back).destination,
            Some(0),
            "a second probe while the first is out"
        );
    }
    e.observe(0, 0, Outcome::Status(200), Some(MS), back + MS);
    e.end(0, 0);
    e.begin(0, 0);
    // Healthy again: in-flight requests no longer block it.
    assert!((0..100).any(|_| e.decide(0, None, back + MS).destination == Some(0)));
}

#[test]
fn everything_ejected_goes_to_the_mesh_default() {
    let mut e = engine(&three(static_weights(), ""));
    for d in &mut e.services[0].destinations {
        d.health.ejected_until_ns = 100;
    }
    let d = e.decide(0, None, 5);
    assert_eq!((d.destination, d.reason), (None, Reason::MeshDefault));
    let d = e.decide(0, Some(b"k"), 5);
    assert_eq!(d.destination, None);
}

#[test]
fn equal_latencies_keep_the_static_split_under_p2c() {
    let mut e = engine(&three(
        r#"{"latency":1,"load":0,"cost":0,"affinity":0}"#,
        "",
    ));
    let mut counts = [0u32; 3];
    let mut now = 0;
    for _ in 0..20_000 {
        now += MS;
        let d = e.decide(0, None, now).destination.expect("chosen");
        counts[d] += 1;
        e.observe(0, d, Outcome::Status(200), Some(5 * MS), now);
    }
    for (c, w) in counts.iter().zip([70.0, 20.0, 10.0]) {
        let pct = f64::from(*c) / 200.0;
        assert!((pct - w).abs() < 3.0, "{pct} vs {w}: {counts:?}");
    }
}

#[test]
fn reconfiguration_keeps_learned_state() {
    let mut e = engine(&three(static_weights(), ""));
    e.observe(0, 1, Outcome::Status(200), Some(7 * MS), 1);
    let config = PluginConfig::from_json(three(static_weights(), "").as_bytes()).expect("valid");
    let e2 = Engine::new(config, e.local.clone(), 1, Some(&e));
    assert_eq!(
        e2.services[0].destinations[1].latency,
        e.services[0].destinations[1].latency
    );
}

#[test]
fn workers_share_ejections_and_latency_peaks() {
    let mut w1 = engine(&three(static_weights(), ""));
    let mut w2 = engine(&three(static_weights(), ""));
    let mut store = MemoryStore::default();
    for _ in 0..5 {
        w1.observe(0, 2, Outcome::Status(503), Some(MS), 10);
    }
    w1.observe(0, 1, Outcome::Status(200), Some(80 * MS), 10);
    assert!(w1.sync_shared(&mut store, 20).is_empty());
    assert!(!w2.services[0].destinations[2].health.is_ejected(30));
    w2.sync_shared(&mut store, 30);
    assert!(w2.services[0].destinations[2].health.is_ejected(30));
    assert_eq!(
        w2.services[0].destinations[1].latency.estimate_ns(),
        80.0 * MS as f64
    );
}

#[test]
fn only_the_ejecting_worker_probes_when_the_ejection_ends() {
    let mut w1 = engine(&three(static_weights(), ""));
    let mut w2 = engine(&three(static_weights(), ""));
    let mut store = MemoryStore::default();
    for _ in 0..5 {
        w1.observe(0, 2, Outcome::Status(503), Some(MS), 10);
    }
    let until = w1.services[0].destinations[2].health.ejected_until_ns;
    assert!(until > 10);
    w1.sync_shared(&mut store, 20);
    w2.sync_shared(&mut store, 30);
    let tick = w2.config.scheduler.tick_ms * MS;
    let (d1, d2) = (
        &w1.services[0].destinations[2],
        &w2.services[0].destinations[2],
    );
    // When the ejection ends, the worker that ejected may probe…
    assert!(!d1.is_blocked(until));
    // …the adopting one holds back for three ticks, then probes too.
    assert!(d2.is_blocked(until));
    assert!(d2.is_blocked(until + 3 * tick - 1));
    assert!(!d2.is_blocked(until + 3 * tick));

    // The probe fails: w1 ejects again for twice as long, publishes,
    // and w2 adopts it before its grace is over.
    w1.observe(0, 2, Outcome::Status(503), Some(MS), until);
    let again = w1.services[0].destinations[2].health.ejected_until_ns;
    assert_eq!(again, until + 2000 * MS);
    w1.sync_shared(&mut store, until + tick);
    w2.sync_shared(&mut store, until + 2 * tick);
    assert!(w2.services[0].destinations[2].is_blocked(until + 3 * tick));
    assert!(!w1.services[0].destinations[2].is_blocked(again));
    // The shared record carries the real end, never a worker's grace.
    let shared = SharedStats::decode(&store.entries[&w1.services[0].destinations[2].shared_key].0)
        .expect("record");
    assert_eq!(shared.ejected_until_ns, again);
}

#[test]
fn a_failure_adopts_another_workers_ejection_at_once() {
    let mut w1 = engine(&three(static_weights(), ""));
    let mut w2 = engine(&three(static_weights(), ""));
    let mut store = MemoryStore::default();
    // Both workers see the destination fail; w1 reaches the streak
    // first and publishes the ejection with the failure that caused it.
    w2.observe(0, 2, Outcome::Status(503), Some(MS), 10);
    w2.share_outcome(&mut store, 0, 2, false, 10);
    for _ in 0..5 {
        w1.observe(0, 2, Outcome::Status(503), Some(MS), 11);
        w1.share_outcome(&mut store, 0, 2, false, 11);
    }
    assert!(w1.services[0].destinations[2].is_blocked(12));
    assert!(
        !w2.services[0].destinations[2].is_blocked(12),
        "w2 has not heard yet"
    );
    // w2's next failure, well before any tick, brings the news: it stops
    // after 2 failures instead of its own 5.
    w2.observe(0, 2, Outcome::Status(503), Some(MS), 12);
    w2.share_outcome(&mut store, 0, 2, false, 12);
    assert!(w2.services[0].destinations[2].is_blocked(13));
    assert_eq!(
        w2.services[0].destinations[2].health.ejections, 1,
        "adopted, not ejected twice"
    );
}

/// One response from destination `c` (index 2), the whole way the host
/// layer takes it: routed (by a trusted routing header, so the test
/// picks the destination), answered with `status`, ended.
fn respond(w: &mut Engine, store: &mut MemoryStore, status: u32, now: u64) -> HealthEvent {
    let mut host = MemoryHost::at(now);
    host.store = std::mem::take(store);
    host.response = vec![(":status".into(), status.to_string().into_bytes())];
    let buf = headers(&[(":authority", "svc.local"), ("x-tideway-destination", "c")]);
    let mut flight = w
        .route(&HeaderMap::parse(&buf), &mut host)
        .expect("governed");
    assert_eq!(flight.decision.destination, Some(2));
    let mut done = w.complete(&mut flight, StreamEvent::ResponseHeaders, &mut host);
    let end = w.complete(&mut flight, StreamEvent::End, &mut host);
    assert!(end.ejection.is_none());
    *store = std::mem::take(&mut host.store);
    match done.ejection.take() {
        Some(e) => HealthEvent::Ejected {
            until_ns: e.until_ns,
        },
        None => HealthEvent::None,
    }
}

#[test]
fn a_streak_split_across_workers_ejects_at_the_threshold() {
    let mut w1 = engine(&trusting(static_weights(), ""));
    let mut w2 = engine(&trusting(static_weights(), ""));
    let mut store = MemoryStore::default();
    for t in 0..3 {
        assert_eq!(respond(&mut w1, &mut store, 503, t), HealthEvent::None);
    }
    assert_eq!(respond(&mut w2, &mut store, 503, 3), HealthEvent::None);
    // The fifth failure in the proxy, the second on w2: ejected.
    assert!(matches!(
        respond(&mut w2, &mut store, 503, 4),
        HealthEvent::Ejected { .. }
    ));
    assert!(w2.services[0].destinations[2].is_blocked(5));
    // w1 adopts it with its next (late) failure, without ejecting again.
    assert_eq!(respond(&mut w1, &mut store, 503, 5), HealthEvent::None);
    assert!(w1.services[0].destinations[2].is_blocked(6));
    let shared = SharedStats::decode(&store.entries[&w1.services[0].destinations[2].shared_key].0)
        .expect("record");
    assert_eq!(shared.ejections, 1);
    assert_eq!(shared.failure_streak, 0, "an ejection ends the streak");
}

#[test]
fn a_success_ends_the_shared_streak() {
    let mut w1 = engine(&trusting(static_weights(), ""));
    let mut w2 = engine(&trusting(static_weights(), ""));
    let mut store = MemoryStore::default();
    for t in 0..2 {
        respond(&mut w1, &mut store, 503, t);
        respond(&mut w2, &mut store, 503, t);
    }
    // Four failures in a row so far; a success on w2 breaks the run…
    assert_eq!(respond(&mut w2, &mut store, 200, 3), HealthEvent::None);
    // …so two more failures are not the fifth and sixth in a row.
    assert_eq!(respond(&mut w1, &mut store, 503, 4), HealthEvent::None);
    assert_eq!(respond(&mut w2, &mut store, 503, 5), HealthEvent::None);
    assert!(!w1.services[0].destinations[2].is_blocked(6));
    assert!(!w2.services[0].destinations[2].is_blocked(6));
}

#[test]
fn successes_in_steady_health_make_no_shared_data_call() {
    let mut w = engine(&trusting(static_weights(), ""));
    let mut store = MemoryStore::default();
    for t in 0..100 {
        respond(&mut w, &mut store, 200, t);
    }
    assert_eq!(store.calls, 0);
    // After a failure the next success publishes the end of the
    // streak, once.
    respond(&mut w, &mut store, 503, 100);
    let after_failure = store.calls;
    respond(&mut w, &mut store, 200, 101);
    respond(&mut w, &mut store, 200, 102);
    assert_eq!(store.calls, after_failure + 2, "one get and one set");
}

#[test]
fn a_fast_failure_does_not_make_a_destination_look_fast() {
    let mut w = engine(&three(static_weights(), ""));
    w.observe(0, 2, Outcome::Status(200), Some(50 * MS), 10);
    let before = w.services[0].destinations[2].latency.estimate_ns();
    w.observe(0, 2, Outcome::Status(503), Some(MS), 11);
    assert_eq!(w.services[0].destinations[2].latency.estimate_ns(), before);
    // Slow failures still raise it (peak-EWMA believes a rise that a
    // request sent after the first late answer confirms).
    w.observe(0, 2, Outcome::Status(503), Some(200 * MS), 200 * MS);
    w.observe(0, 2, Outcome::Status(503), Some(200 * MS), 400 * MS);
    assert_eq!(
        w.services[0].destinations[2].latency.estimate_ns(),
        200.0 * MS as f64
    );
}

#[test]
fn corrupt_shared_records_are_reported_and_replaced() {
    let mut w = engine(&three(static_weights(), ""));
    let mut store = MemoryStore::default();
    store
        .entries
        .insert(shared_stats::key("svc", "a"), (b"junk".to_vec(), 3));
    let bad = w.sync_shared(&mut store, 1);
    assert_eq!(bad.len(), 1);
    assert!(SharedStats::decode(&store.entries[&shared_stats::key("svc", "a")].0).is_ok());
}

fn headers(pairs: &[(&str, &str)]) -> Vec<u8> {
    header_map::serialize(pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
}

const TRUST_PRINCIPAL: &str =
    r#""trust":{"principals":["spiffe://cluster.local/ns/ops/sa/driver"]},"#;

fn with_top(extra_top: &str, weights: &str, extra: &str) -> String {
    let mut config = three(weights, extra);
    config.insert_str(1, extra_top);
    config
}

#[test]
fn an_ungoverned_host_is_left_alone() {
    let mut e = engine(&three(static_weights(), ""));
    let mut host = MemoryHost::at(1);
    let buf = headers(&[
        (":authority", "other.local"),
        ("x-tideway-destination", "c"),
    ]);
    assert!(e.route(&HeaderMap::parse(&buf), &mut host).is_none());
    assert!(host.writes.is_empty());
}

#[test]
fn an_untrusted_routing_header_is_replaced_and_tideway_headers_removed() {
    let mut e = engine(&with_top(TRUST_PRINCIPAL, static_weights(), ""));
    let mut host = MemoryHost::at(1);
    host.principal = Some(b"spiffe://cluster.local/ns/web/sa/frontend".to_vec());
    let buf = headers(&[
        (":authority", "svc.local"),
        ("x-tideway-destination", "c"),
        ("x-tideway-debug", "1"),
        ("x-tideway-debug", "2"),
    ]);
    let flight = e
        .route(&HeaderMap::parse(&buf), &mut host)
        .expect("governed");
    assert_ne!(flight.decision.reason, Reason::TrustedHeader);
    assert_eq!(
        host.principal_asked, 1,
        "asked once, only because a header claimed"
    );
    let chosen = flight.decision.destination.expect("chosen");
    assert_eq!(
        host.written("x-tideway-destination"),
        Some(Some(e.services[0].destinations[chosen].name.as_bytes()))
    );
    let removed: Vec<_> = host
        .writes
        .iter()
        .filter(|(n, v, _)| n == "x-tideway-debug" && v.is_none())
        .collect();
    assert_eq!(
        removed.len(),
        1,
        "removed once for both copies: {:?}",
        host.writes
    );
}

#[test]
fn a_trusted_principal_names_the_destination_and_keeps_its_headers() {
    let mut e = engine(&with_top(TRUST_PRINCIPAL, static_weights(), ""));
    let mut host = MemoryHost::at(1);
    host.principal = Some(b"spiffe://cluster.local/ns/ops/sa/driver".to_vec());
    let buf = headers(&[
        (":authority", "svc.local"),
        ("x-tideway-destination", "c"),
        ("x-tideway-debug", "1"),
    ]);
    let flight = e
        .route(&HeaderMap::parse(&buf), &mut host)
        .expect("governed");
    assert_eq!(
        (flight.decision.destination, flight.decision.reason),
        (Some(2), Reason::TrustedHeader)
    );
    assert_eq!(host.principal_asked, 1);
    assert!(
        host.written("x-tideway-debug").is_none(),
        "{:?}",
        host.writes
    );
    // The header was present: replaced, not added next to the client's.
    assert!(host
        .writes
        .iter()
        .any(|(n, v, present)| n == "x-tideway-destination"
            && v.as_deref() == Some(b"c")
            && *present));
}

#[test]
fn without_a_claim_the_peer_is_never_asked() {
    let mut e = engine(&with_top(TRUST_PRINCIPAL, static_weights(), ""));
    let mut host = MemoryHost::at(1);
    let buf = headers(&[(":authority", "svc.local"), ("x-request-id", "r")]);
    e.route(&HeaderMap::parse(&buf), &mut host)
        .expect("governed");
    assert_eq!(host.principal_asked, 0);
    // Added (absent before): the routing header and the hop headers.
    for name in [
        "x-tideway-destination",
        "x-cluster-source",
        "x-cluster-target",
        "x-service-name",
    ] {
        assert!(
            host.writes
                .iter()
                .any(|(n, v, present)| n == name && v.is_some() && !present),
            "{name}: {:?}",
            host.writes
        );
    }
}

#[test]
fn the_session_key_comes_from_the_configured_cookie() {
    let cookie = r#""affinity":{"source":"cookie","name":"session"},"#;
    let mut e = engine(&three(static_weights(), cookie));
    let route = |e: &mut Engine, cookies: &[&str]| {
        let mut pairs = vec![(":authority", "svc.local")];
        pairs.extend(cookies.iter().map(|c| ("cookie", *c)));
        let buf = headers(&pairs);
        e.route(&HeaderMap::parse(&buf), &mut MemoryHost::at(1))
            .expect("governed")
            .decision
    };
    let first = route(&mut e, &["a=1", "theme=dark; session=alice"]);
    assert_eq!(first.reason, Reason::Affinity);
    for _ in 0..20 {
        assert_eq!(
            route(&mut e, &["session=alice"]).destination,
            first.destination
        );
    }
    // An empty key is no key: scored (static here), not hashed.
    assert_eq!(route(&mut e, &["session="]).reason, Reason::Static);
    assert_eq!(route(&mut e, &[]).reason, Reason::Static);
}

#[test]
fn complete_records_the_outcome_and_reports_the_ejection() {
    let mut e = engine(&trusting(static_weights(), ""));
    let mut store = MemoryStore::default();
    let events: Vec<HealthEvent> = (0..5)
        .map(|t| respond(&mut e, &mut store, 503, t))
        .collect();
    assert_eq!(&events[..4], &[HealthEvent::None; 4]);
    assert!(
        matches!(events[4], HealthEvent::Ejected { .. }),
        "{events:?}"
    );
    assert!(e.services[0].destinations[2].health.is_ejected(5));
    assert_eq!(
        e.services[0].destinations[2].in_flight, 0,
        "every stream ended"
    );
}

#[test]
fn in_flight_lasts_from_route_to_the_end_of_the_stream() {
    let mut e = engine(&trusting(static_weights(), ""));
    let mut host = MemoryHost::at(10);
    host.response = vec![(":status".into(), b"200".to_vec())];
    let buf = headers(&[(":authority", "svc.local"), ("x-tideway-destination", "b")]);
    let mut flight = e
        .route(&HeaderMap::parse(&buf), &mut host)
        .expect("governed");
    assert_eq!(e.services[0].destinations[1].in_flight, 1);
    host.now = 10 + 7 * MS;
    e.complete(&mut flight, StreamEvent::ResponseHeaders, &mut host);
    assert_eq!(
        e.services[0].destinations[1].in_flight, 1,
        "still streaming"
    );
    assert_eq!(
        e.services[0].destinations[1].latency.estimate_ns(),
        7.0 * MS as f64
    );
    e.complete(&mut flight, StreamEvent::End, &mut host);
    e.complete(&mut flight, StreamEvent::End, &mut host);
    assert_eq!(e.services[0].destinations[1].in_flight, 0, "ended once");
}

#[test]
fn a_request_routed_before_a_reconfiguration_leaves_the_new_engine_alone() {
    let config = trusting(static_weights(), "");
    let mut old = engine(&config);
    let mut host = MemoryHost::at(1);
    host.response = vec![(":status".into(), b"503".to_vec())];
    let buf = headers(&[(":authority", "svc.local"), ("x-tideway-destination", "c")]);
    let mut flight = old
        .route(&HeaderMap::parse(&buf), &mut host)
        .expect("governed");
    let parsed = PluginConfig::from_json(config.as_bytes()).expect("valid");
    let mut new = Engine::new(parsed, old.local.clone(), 1, Some(&old));
    assert_eq!(new.epoch(), old.epoch() + 1);
    new.complete(&mut flight, StreamEvent::ResponseHeaders, &mut host);
    new.complete(&mut flight, StreamEvent::End, &mut host);
    let c = &new.services[0].destinations[2];
    assert_eq!((c.in_flight, c.health.consecutive_failures), (0, 0));
}

#[test]
fn the_decision_header_explains_when_configured() {
    let mut e = engine(&with_top(r#""decisionHeader":true,"#, static_weights(), ""));
    let mut host = MemoryHost::at(1);
    host.response = vec![(":status".into(), b"200".to_vec())];
    let buf = headers(&[(":authority", "svc.local")]);
    let mut flight = e
        .route(&HeaderMap::parse(&buf), &mut host)
        .expect("governed");
    let done = e.complete(&mut flight, StreamEvent::ResponseHeaders, &mut host);
    let header = done.decision_header.expect("explained");
    assert!(header.starts_with("service=svc; destination="), "{header}");
}

#[test]
fn decision_counts_are_drained_once() {
    let mut e = engine(&three(static_weights(), ""));
    for t in 0..10 {
        let buf = headers(&[(":authority", "svc.local")]);
        e.route(&HeaderMap::parse(&buf), &mut MemoryHost::at(t));
    }
    let mut seen = Vec::new();
    e.drain_decision_counts(|s, d, r, n| seen.push((s, d, r, n)));
    let total: u32 = seen.iter().map(|(_, _, _, n)| n).sum();
    assert_eq!(total, 10);
    assert!(seen.iter().all(|(_, _, r, _)| *r == Reason::Static));
    let mut again = 0;
    e.drain_decision_counts(|_, _, _, _| again += 1);
    assert_eq!(again, 0);
}

#[test]
fn a_failed_routing_header_write_leaves_the_request_to_the_mesh() {
    let mut e = engine(&three(static_weights(), ""));
    let mut host = MemoryHost::at(1);
    host.failing_header = Some("x-tideway-destination");
    let buf = headers(&[(":authority", "svc.local"), ("x-tideway-destination", "c")]);
    let mut flight = e
        .route(&HeaderMap::parse(&buf), &mut host)
        .expect("governed");
    assert_eq!(
        (flight.decision.destination, flight.decision.reason),
        (None, Reason::MeshDefault)
    );
    // The client's copy is removed instead of left to route the request.
    assert_eq!(host.written("x-tideway-destination"), Some(None));
    assert!(e.services[0].destinations.iter().all(|d| d.in_flight == 0));
    host.response = vec![(":status".into(), b"503".to_vec())];
    e.complete(&mut flight, StreamEvent::ResponseHeaders, &mut host);
    e.complete(&mut flight, StreamEvent::End, &mut host);
    assert!(e.services[0]
        .destinations
        .iter()
        .all(|d| d.health.consecutive_failures == 0));
}

#[test]
fn a_failed_clock_decides_nothing_and_strips_the_routing_header() {
    let mut e = engine(&three(static_weights(), ""));
    let mut host = MemoryHost {
        failing_clock: true,
        ..MemoryHost::at(1)
    };
    let buf = headers(&[(":authority", "svc.local"), ("x-tideway-destination", "c")]);
    assert!(e.route(&HeaderMap::parse(&buf), &mut host).is_none());
    assert_eq!(host.writes.len(), 1, "{:?}", host.writes);
    assert_eq!(host.written("x-tideway-destination"), Some(None));
}

#[test]
fn a_shared_store_that_fails_is_never_written_over() {
    let mut e = engine(&trusting(static_weights(), ""));
    let mut store = MemoryStore::failing();
    // Failures still eject on this worker's own streak.
    let events: Vec<HealthEvent> = (0..5)
        .map(|t| respond(&mut e, &mut store, 503, t))
        .collect();
    assert!(
        matches!(events[4], HealthEvent::Ejected { .. }),
        "{events:?}"
    );
    assert!(e.sync_shared(&mut store, 10).is_empty());
    assert!(store.entries.is_empty());
    assert_eq!(e.services[0].destinations[2].health.shared_streak, 0);
}

/// A request to `c` that ends with no response, Envoy's flags saying why.
fn unanswered(e: &mut Engine, flags: u64, now: u64) -> MemoryHost {
    let mut host = MemoryHost::at(now);
    host.flags = flags;
    let buf = headers(&[(":authority", "svc.local"), ("x-tideway-destination", "c")]);
    let mut flight = e
        .route(&HeaderMap::parse(&buf), &mut host)
        .expect("governed");
    e.complete(&mut flight, StreamEvent::End, &mut host);
    host
}

#[test]
fn clients_that_hang_up_never_eject_a_destination() {
    const DC: u64 = 1 << 14;
    let mut e = engine(&trusting(static_weights(), ""));
    for t in 0..50 {
        let host = unanswered(&mut e, DC, t);
        assert_eq!(host.flags_read, 1, "the flags are read once");
    }
    let c = &e.services[0].destinations[2];
    assert!(!c.health.is_ejected(51), "{:?}", c.health);
    assert_eq!((c.in_flight, c.health.consecutive_failures), (0, 0));
}

#[test]
fn an_upstream_that_resets_or_times_out_is_ejected() {
    for flags in [1 << 4, 1 << 2, 1 << 5] {
        let mut e = engine(&trusting(static_weights(), ""));
        for t in 0..5 {
            unanswered(&mut e, flags, t);
        }
        assert!(
            e.services[0].destinations[2].health.is_ejected(6),
            "flags {flags:#x}"
        );
    }
}

#[test]
fn an_answered_request_never_reads_the_flags() {
    let mut e = engine(&trusting(static_weights(), ""));
    let mut store = MemoryStore::default();
    respond(&mut e, &mut store, 200, 1);
    let mut host = MemoryHost::at(2);
    host.response = vec![(":status".into(), b"200".to_vec())];
    let buf = headers(&[(":authority", "svc.local")]);
    let mut flight = e
        .route(&HeaderMap::parse(&buf), &mut host)
        .expect("governed");
    e.complete(&mut flight, StreamEvent::ResponseHeaders, &mut host);
    e.complete(&mut flight, StreamEvent::End, &mut host);
    assert_eq!(host.flags_read, 0);
}

/// One gRPC call to `c`: response headers at `+5 ms` carrying `in_headers`,
/// trailers at `+10 min` carrying `in_trailers`, then the end.
fn grpc_call(
    e: &mut Engine,
    now: u64,
    in_headers: &[(&str, &str)],
    in_trailers: &[(&str, &str)],
) -> MemoryHost {
    let mut host = MemoryHost::at(now);
    let buf = headers(&[
        (":authority", "svc.local"),
        ("content-type", "application/grpc"),
        ("x-tideway-destination", "c"),
    ]);
    let mut flight = e
        .route(&HeaderMap::parse(&buf), &mut host)
        .expect("governed");
    host.now = now + 5 * MS;
    host.response = [(":status", "200")]
        .iter()
        .chain(in_headers)
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    e.complete(&mut flight, StreamEvent::ResponseHeaders, &mut host);
    assert_eq!(e.services[0].destinations[2].in_flight, 1, "streaming");
    host.now = now + 600_000 * MS;
    host.trailers = in_trailers
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    if !in_trailers.is_empty() {
        e.complete(&mut flight, StreamEvent::ResponseTrailers, &mut host);
    }
    e.complete(&mut flight, StreamEvent::End, &mut host);
    assert_eq!(
        e.services[0].destinations[2].in_flight, 0,
        "ended with the stream"
    );
    host
}

#[test]
fn a_grpc_destination_answering_unavailable_in_the_trailers_is_ejected() {
    let mut e = engine(&trusting(static_weights(), ""));
    for t in 0..5 {
        grpc_call(&mut e, t * 1_000_000 * MS, &[], &[("grpc-status", "14")]);
    }
    assert!(e.services[0].destinations[2]
        .health
        .is_ejected(4_000_001 * MS));
}

#[test]
fn a_trailers_only_grpc_error_is_read_from_the_headers() {
    let mut e = engine(&trusting(static_weights(), ""));
    for t in 0..5 {
        let host = grpc_call(&mut e, t * 1_000_000 * MS, &[("grpc-status", "14")], &[]);
        assert!(!host.reads.iter().any(|r| r.starts_with("trailer")));
    }
    assert!(e.services[0].destinations[2]
        .health
        .is_ejected(4_000_001 * MS));
}

#[test]
fn a_long_grpc_stream_is_not_a_slow_destination() {
    let mut e = engine(&trusting(static_weights(), ""));
    grpc_call(&mut e, 0, &[], &[("grpc-status", "0")]);
    // The sample is the 5 ms to the response headers, not the ten minutes.
    assert_eq!(
        e.services[0].destinations[2].latency.estimate_ns(),
        5.0 * MS as f64
    );
    assert_eq!(e.services[0].destinations[2].health.consecutive_failures, 0);
}

#[test]
fn grpc_codes_outside_the_failure_set_are_the_callers_business() {
    let mut e = engine(&trusting(static_weights(), ""));
    for t in 0..10 {
        // NOT_FOUND, INVALID_ARGUMENT: the call was wrong, not the server.
        let code = if t % 2 == 0 { "5" } else { "3" };
        grpc_call(&mut e, t * 1_000_000 * MS, &[], &[("grpc-status", code)]);
    }
    assert!(!e.services[0].destinations[2]
        .health
        .is_ejected(10_000_000 * MS));
    // Configured otherwise, NOT_FOUND ejects.
    let weights = format!(r#"{},"grpcFailureCodes":[5]"#, static_weights());
    let mut e = engine(&trusting(&weights, ""));
    for t in 0..5 {
        grpc_call(&mut e, t * 1_000_000 * MS, &[], &[("grpc-status", "5")]);
    }
    assert!(e.services[0].destinations[2]
        .health
        .is_ejected(4_000_001 * MS));
}

#[test]
fn plain_http_pays_nothing_for_grpc() {
    let mut e = engine(&trusting(static_weights(), ""));
    let mut host = MemoryHost::at(1);
    host.response = vec![
        (":status".into(), b"200".to_vec()),
        ("grpc-status".into(), b"14".to_vec()),
    ];
    let buf = headers(&[(":authority", "svc.local"), ("x-tideway-destination", "c")]);
    let mut flight = e
        .route(&HeaderMap::parse(&buf), &mut host)
        .expect("governed");
    e.complete(&mut flight, StreamEvent::ResponseHeaders, &mut host);
    e.complete(&mut flight, StreamEvent::ResponseTrailers, &mut host);
    e.complete(&mut flight, StreamEvent::End, &mut host);
    assert_eq!(host.reads, vec![":status".to_string()]);
    assert_eq!(e.services[0].destinations[2].health.consecutive_failures, 0);
}

#[test]
fn a_grpc_stream_that_ends_without_a_status_asks_envoy_why() {
    let mut e = engine(&trusting(static_weights(), ""));
    // The client went away mid-stream (flags 0 or DC): nothing recorded.
    let host = grpc_call(&mut e, 0, &[], &[]);
    assert_eq!(host.flags_read, 1);
    assert_eq!(e.services[0].destinations[2].health.consecutive_failures, 0);
}

fn with_document(e: &mut Engine, doc: &str) {
    let weights =
        crate::weights_channel::adopt::parse_and_check(doc.as_bytes(), &e.config).expect("adopted");
    e.apply_weights(Some(&weights));
}

fn shares(e: &mut Engine, n: u64, from: u64) -> [u32; 3] {
    let mut counts = [0u32; 3];
    for i in 0..n {
        if let Some(d) = e.decide(0, None, from + i).destination {
            counts[d] += 1;
        }
    }
    counts
}

#[test]
fn a_document_replaces_weights_and_costs_and_static_ones_come_back() {
    let mut e = engine(&three(static_weights(), ""));
    with_document(
        &mut e,
        r#"{"version":2,"services":[{"name":"svc","destinations":[
            {"name":"a","weight":10,"cost":0},{"name":"c","weight":90,"cost":5}]}]}"#,
    );
    // b keeps its static 20: 10/20/90 of 120.
    assert_eq!(shares(&mut e, 120, 0), [10, 20, 90]);
    assert_eq!(e.services[0].destinations[2].cost, 5.0);
    e.apply_weights(None);
    assert_eq!(shares(&mut e, 100, 0), [70, 20, 10]);
    assert_eq!(e.services[0].destinations[2].cost, 0.0);
}

#[test]
fn document_factors_replace_the_service_factors() {
    let mut e = engine(&three(static_weights(), ""));
    assert!(e.services[0].static_only);
    with_document(
        &mut e,
        r#"{"version":2,"services":[{"name":"svc","factors":{"latency":1},"destinations":[]}]}"#,
    );
    assert!(!e.services[0].static_only);
    assert_eq!(e.services[0].weights.latency, 1.0);
    assert_eq!(e.decide(0, None, 0).reason, Reason::Score);
    e.apply_weights(None);
    assert!(e.services[0].static_only);
}

#[test]
fn a_drained_destination_gets_no_new_traffic_while_another_is_usable() {
    for weights in [
        static_weights(),
        r#"{"latency":1,"load":1,"cost":0,"affinity":0}"#,
    ] {
        let mut e = engine(&three(weights, ""));
        with_document(
            &mut e,
            r#"{"version":2,"services":[{"name":"svc","destinations":[
                {"name":"a","weight":70,"cost":0,"drained":true}]}]}"#,
        );
        assert!(e.is_drained(0, 0));
        let counts = shares(&mut e, 3_000, 0);
        assert_eq!(counts[0], 0, "{weights}: {counts:?}");
        assert!(
            counts[1] > counts[2],
            "{weights}: the rest keep their split: {counts:?}"
        );
        // Sessions move off it too.
        let mut affinity = engine(&three(
            weights,
            r#""affinity":{"source":"header","name":"x-user"},"#,
        ));
        with_document(
            &mut affinity,
            r#"{"version":2,"services":[{"name":"svc","destinations":[
                {"name":"a","weight":70,"cost":0,"drained":true}]}]}"#,
        );
        for user in 0..200u32 {
            let d = affinity.decide(0, Some(&user.to_le_bytes()), 0);
            assert_ne!(d.destination, Some(0), "{weights}: user {user}");
        }
    }
}

#[test]
fn drained_destinations_serve_when_nothing_undrained_is_usable() {
    let mut e = engine(&three(static_weights(), ""));
    with_document(
        &mut e,
        r#"{"version":2,"services":[{"name":"svc","destinations":[
            {"name":"a","weight":70,"cost":0,"drained":true},
            {"name":"b","weight":20,"cost":0},
            {"name":"c","weight":10,"cost":0,"drained":true}]}]}"#,
    );
    assert_eq!(shares(&mut e, 100, 0), [0, 100, 0]);
    // b is ejected: the drained ones take the traffic rather than none.
    let mut h = e.services[0].destinations[1].health;
    let until = h.eject(0, &e.config.scheduler);
    e.services[0].destinations[1].health = h;
    let counts = shares(&mut e, 80, MS);
    assert_eq!(counts[1], 0);
    assert_eq!(counts[0] + counts[2], 80, "{counts:?}");
    assert!(counts[0] > counts[2], "at their base weights: {counts:?}");
    // b back (past its ejection, off probation by a success): drained again.
    e.services[0].destinations[1].health.probation = false;
    assert_eq!(shares(&mut e, 100, until + MS), [0, 100, 0]);
}

/// Serve `n` requests one after another, `gap` apart, each answered with
/// `status`; the clock reads they made, and how many were routed to a
/// destination.
fn serve(e: &mut Engine, host: &mut MemoryHost, n: u64, gap: u64, status: &str) -> (usize, usize) {
    let buf = headers(&[(":authority", "svc.local")]);
    host.response = vec![(":status".into(), status.as_bytes().to_vec())];
    let before = host.clock_reads;
    let mut routed = 0;
    for _ in 0..n {
        host.now += gap;
        let mut flight = e.route(&HeaderMap::parse(&buf), host).expect("governed");
        routed += usize::from(flight.decision.destination.is_some());
        e.complete(&mut flight, StreamEvent::ResponseHeaders, host);
        e.complete(&mut flight, StreamEvent::End, host);
    }
    (host.clock_reads - before, routed)
}

#[test]
fn at_a_high_rate_few_requests_read_the_clock_and_every_failure_does() {
    let mut e = engine(&three(
        r#"{"latency":1,"load":0,"cost":0,"affinity":0}"#,
        "",
    ));
    let mut host = MemoryHost::at(1_000 * MS);
    e.retune_timing(host.now);
    // 40,000 requests a second (25 µs apart) for one 200 ms tick: until a
    // tick has seen the rate, each reads the clock twice.
    let gap = MS / 40;
    let (reads, routed) = serve(&mut e, &mut host, 8_000, gap, "200");
    assert_eq!(routed, 8_000);
    assert_eq!(reads, 16_000);
    e.retune_timing(host.now);
    // Then about TIMED_PER_SECOND a second per destination are timed.
    let (reads, _) = serve(&mut e, &mut host, 8_000, gap, "200");
    assert!(
        reads <= 2 * 3 * 220,
        "{reads} clock reads for 8,000 requests"
    );
    assert!(reads >= 2 * 200, "{reads}: still timed at ~1,000 a second");
    // A failure reads the clock whatever the stride: its latency counts.
    let (reads, routed) = serve(&mut e, &mut host, 3, gap, "503");
    assert_eq!(routed, 3);
    assert!(reads >= 3, "{reads} clock reads for 3 failures");
    // The rate falls to 100 a second: after the next tick every request is
    // timed again.
    e.retune_timing(host.now);
    serve(&mut e, &mut host, 20, 10 * MS, "200");
    e.retune_timing(host.now);
    let (reads, routed) = serve(&mut e, &mut host, 20, 10 * MS, "200");
    assert_eq!(reads, 2 * routed);
}

#[test]
fn span_mode_times_every_request() {
    let mut e = engine(
        &three(r#"{"latency":1,"load":0,"cost":0,"affinity":0}"#, "").replacen(
            '{',
            r#"{"tracing":{"mode":"span","collector":{"cluster":"otel"}},"#,
            1,
        ),
    );
    let mut host = MemoryHost::at(1_000 * MS);
    e.retune_timing(host.now);
    serve(&mut e, &mut host, 8_000, MS / 40, "200");
    e.retune_timing(host.now);
    let (reads, routed) = serve(&mut e, &mut host, 1_000, MS / 40, "200");
    assert!(
        reads >= 2 * routed,
        "{reads} clock reads for {routed} routed requests"
    );
}
