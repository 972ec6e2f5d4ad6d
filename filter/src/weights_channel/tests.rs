//! The channel across two workers sharing one store, on a hand-moved clock.

use super::*;
use crate::config::PluginConfig;
use crate::decision::memory::MemoryStore;
use crate::decision::LocalIdentity;

const MS: u64 = 1_000_000;
const TICK: u64 = 200 * MS;

fn config() -> PluginConfig {
    PluginConfig::from_json(
        br#"{"services":[{"name":"reviews","hosts":["reviews"],
            "weights":{"latency":0,"load":0,"cost":0,"affinity":0},
            "destinations":[{"name":"east","weight":50},{"name":"west","weight":50}]}],
          "weightsSource":{"cluster":"outbound|8080||tideway","authority":"tideway:8080",
            "waitMs":30000,"leaseMs":1000,"retryMs":500,"ttlMs":60000}}"#,
    )
    .expect("valid")
}

struct Worker {
    engine: Engine,
    channel: WeightsChannel,
    next_token: u32,
    /// The poll in flight and what it asked.
    out: Option<(u32, PollRequest)>,
    events: Vec<Event>,
}

impl Worker {
    fn new(holder: u64) -> Self {
        let config = config();
        let source = config.weights_source.clone().expect("source");
        Self {
            engine: Engine::new(config, LocalIdentity::default(), holder, None),
            channel: WeightsChannel::new(source, "prod.tideway", holder),
            next_token: 0,
            out: None,
            events: Vec::new(),
        }
    }

    fn take(&mut self, step: Step, now: u64) {
        self.events.extend(step.events);
        if let Some(request) = step.poll {
            self.next_token += 1;
            self.channel.sent(self.next_token, &request, now);
            self.out = Some((self.next_token, request));
        }
    }

    fn tick(&mut self, store: &mut MemoryStore, now: u64) {
        let step = self.channel.on_tick(&mut self.engine, store, now);
        self.take(step, now);
    }

    fn answer(&mut self, store: &mut MemoryStore, status: Option<u16>, body: &str, now: u64) {
        let (token, _) = self.out.take().expect("a poll in flight");
        let body = body.as_bytes().to_vec();
        let step = self
            .channel
            .on_answer(
                token,
                status,
                |max| {
                    if body.len() as u64 > max {
                        Err(body.len() as u64)
                    } else {
                        Ok(body)
                    }
                },
                &mut self.engine,
                store,
                now,
            )
            .expect("our poll");
        self.take(step, now);
    }

    fn weights(&self) -> Vec<f64> {
        self.engine.services[0]
            .destinations
            .iter()
            .map(|d| d.base_weight)
            .collect()
    }

    fn rejected(&self) -> Vec<RejectReason> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Rejected(r) => Some(r.reason),
                _ => None,
            })
            .collect()
    }
}

fn doc(version: u64, east: f64) -> String {
    format!(
        r#"{{"version":{version},"services":[{{"name":"reviews","destinations":[
            {{"name":"east","weight":{east},"cost":0}},{{"name":"west","weight":1,"cost":0,"drained":true}}]}}]}}"#
    )
}

#[test]
fn the_holder_polls_and_every_worker_adopts_on_its_next_tick() {
    let mut store = MemoryStore::default();
    let (mut a, mut b) = (Worker::new(1), Worker::new(2));
    a.tick(&mut store, 0);
    b.tick(&mut store, 0);
    assert!(a.out.is_some() && b.out.is_none(), "one poller per proxy");
    let (_, first) = a.out.clone().unwrap();
    assert_eq!(first.path, "/v1/weights?service=reviews");
    assert_eq!(first.if_none_match, None);

    a.answer(&mut store, Some(200), &doc(3, 9.0), 10 * MS);
    assert_eq!(a.weights(), [9.0, 1.0], "the holder adopts at once");
    assert_eq!(a.channel.applied_version(), Some(3));
    assert_eq!(
        b.weights(),
        [50.0, 50.0],
        "the other worker waits for its tick"
    );
    let (_, next) = a.out.clone().expect("the next poll goes out at once");
    assert_eq!(next.path, "/v1/weights?service=reviews&wait=30s");
    assert_eq!(next.if_none_match.as_deref(), Some("\"3\""));

    b.tick(&mut store, TICK);
    assert_eq!(b.weights(), [9.0, 1.0]);
    assert!(b.engine.is_drained(0, 1));
    assert!(b.events.contains(&Event::Adopted { version: 3 }));
}

#[test]
fn a_304_keeps_the_weights_and_restarts_the_ttl() {
    let mut store = MemoryStore::default();
    let (mut a, mut b) = (Worker::new(1), Worker::new(2));
    a.tick(&mut store, 0);
    a.answer(&mut store, Some(200), &doc(3, 9.0), 0);
    // The long-poll ends in a 304 after 30 s, again and again, for 10 min.
    let mut now = 0;
    for _ in 0..20 {
        now += 30_000 * MS;
        a.tick(&mut store, now);
        a.answer(&mut store, Some(304), "", now);
        b.tick(&mut store, now);
    }
    assert_eq!(a.weights(), [9.0, 1.0]);
    assert_eq!(
        b.weights(),
        [9.0, 1.0],
        "confirmed through shared data, never expired"
    );
    assert!(!a
        .events
        .iter()
        .chain(&b.events)
        .any(|e| matches!(e, Event::Expired { .. })));
}

#[test]
fn rejected_answers_keep_the_previous_weights() {
    let mut store = MemoryStore::default();
    let mut a = Worker::new(1);
    let mut b = Worker::new(2);
    a.tick(&mut store, 0);
    a.answer(&mut store, Some(200), &doc(5, 9.0), 0);
    let cases: [(Option<u16>, String, RejectReason); 5] = [
        (Some(200), "{\"version\":6,".to_string(), RejectReason::Malformed),
        (Some(200), doc(4, 1.0), RejectReason::Stale),
        (
            Some(200),
            r#"{"version":7,"services":[{"name":"reviews","destinations":[{"name":"mars","weight":1,"cost":0}]}]}"#.to_string(),
            RejectReason::Unauthorised,
        ),
        (Some(403), String::new(), RejectReason::Denied),
        (Some(200), doc(8, 1.0) + &" ".repeat(2 << 20), RejectReason::Malformed),
    ];
    let mut now = 0;
    for (status, body, reason) in cases {
        now += 1_000 * MS;
        a.tick(&mut store, now);
        a.events.clear();
        a.answer(&mut store, status, &body, now);
        assert_eq!(a.rejected(), [reason], "{status:?}");
        assert_eq!(a.weights(), [9.0, 1.0], "{reason:?}: previous weights stay");
        assert!(a.out.is_none(), "{reason:?}: the next poll waits retryMs");
        b.tick(&mut store, now);
        assert_eq!(b.weights(), [9.0, 1.0]);
    }
    // The unauthorised version 7 is not asked for again.
    now += 1_000 * MS;
    a.tick(&mut store, now);
    assert_eq!(
        a.out.as_ref().unwrap().1.if_none_match.as_deref(),
        Some("\"7\"")
    );
    assert!(b.rejected().is_empty(), "nothing bad reached shared data");
}

#[test]
fn unreachable_for_the_ttl_falls_back_to_static_and_recovers() {
    let mut store = MemoryStore::default();
    let (mut a, mut b) = (Worker::new(1), Worker::new(2));
    a.tick(&mut store, 0);
    a.answer(&mut store, Some(200), &doc(3, 9.0), 0);
    b.tick(&mut store, TICK);
    // From now on every poll fails (reset).
    let mut now = TICK;
    while now < 60_000 * MS - TICK {
        now += TICK;
        a.tick(&mut store, now);
        b.tick(&mut store, now);
        if a.out.is_some() {
            a.answer(&mut store, None, "", now);
        }
        assert_eq!(
            b.weights(),
            [9.0, 1.0],
            "kept until the TTL, at {} ms",
            now / MS
        );
    }
    assert!(a.events.iter().any(|e| matches!(e, Event::PollFailed(_))));
    now = 60_000 * MS;
    a.tick(&mut store, now);
    b.tick(&mut store, now);
    assert_eq!(a.weights(), [50.0, 50.0], "static after the TTL");
    assert_eq!(b.weights(), [50.0, 50.0]);
    assert!(!b.engine.is_drained(0, 1));
    assert!(b.events.contains(&Event::Expired { version: 3 }));
    // The controller is back and confirms version 3: adopted again.
    if a.out.is_none() {
        now += 500 * MS;
        a.tick(&mut store, now);
    }
    a.answer(&mut store, Some(304), "", now);
    b.tick(&mut store, now + TICK);
    assert_eq!(b.weights(), [9.0, 1.0]);
}

#[test]
fn the_lease_passes_on_when_the_holder_stops_ticking() {
    let mut store = MemoryStore::default();
    let (mut a, mut b) = (Worker::new(1), Worker::new(2));
    a.tick(&mut store, 0);
    a.answer(&mut store, Some(200), &doc(3, 9.0), 0);
    // a's VM stops; b ticks on. Lease 1 s from a's last renewal at 0.
    let mut now = 0;
    while now < 1_000 * MS - TICK {
        now += TICK;
        b.tick(&mut store, now);
        assert!(b.out.is_none(), "b does not poll while a's lease holds");
    }
    b.tick(&mut store, 1_000 * MS);
    assert!(b.events.contains(&Event::Lease(LeaseChange::Acquired {
        from_lapsed: Some(1)
    })));
    let (_, request) = b.out.clone().expect("b polls");
    assert_eq!(
        request.if_none_match.as_deref(),
        Some("\"3\""),
        "it knows the version"
    );
    assert!(
        !request.path.contains("wait="),
        "first poll of a new holder does not wait"
    );
    b.answer(&mut store, Some(200), &doc(4, 2.0), 1_000 * MS);
    assert_eq!(b.weights(), [2.0, 1.0]);
    // A restarted VM in a's place is a new holder: it adopts, does not poll.
    let mut restarted = Worker::new(3);
    restarted.tick(&mut store, 1_100 * MS);
    assert_eq!(restarted.weights(), [2.0, 1.0]);
    assert!(restarted.out.is_none());
}

#[test]
fn a_bad_shared_record_is_rejected_once_and_kept_out() {
    let mut store = MemoryStore::default();
    let mut b = Worker::new(2);
    let keys = record::Keys::for_plugin("prod.tideway");
    let bad = record::DocumentRecord {
        version: 9,
        confirmed_at_ns: 0,
        body: br#"{"version":9,"services":[{"name":"payments","destinations":[]}]}"#.to_vec(),
    };
    store.set(&keys.document, &bad.encode(), None).unwrap();
    b.tick(&mut store, 0);
    b.tick(&mut store, TICK);
    assert_eq!(b.rejected(), [RejectReason::Unauthorised], "once");
    assert_eq!(b.weights(), [50.0, 50.0]);
}

#[test]
fn a_reconfiguration_checks_the_held_document_again() {
    let mut store = MemoryStore::default();
    let mut a = Worker::new(1);
    a.tick(&mut store, 0);
    a.answer(&mut store, Some(200), &doc(3, 9.0), 0);
    // The same config again: the rebuilt engine gets the weights back.
    let rebuilt = Engine::new(config(), LocalIdentity::default(), 1, Some(&a.engine));
    a.engine = rebuilt;
    assert_eq!(a.weights(), [50.0, 50.0]);
    let source = a.engine.config.weights_source.clone().unwrap();
    a.channel.reconfigured(source.clone());
    a.events.clear();
    a.tick(&mut store, TICK);
    assert_eq!(a.events, [Event::Adopted { version: 3 }]);
    assert_eq!(a.weights(), [9.0, 1.0]);
    // A config without `west`: the document names it, so it is refused.
    let mut narrower = config();
    narrower.services[0].destinations.truncate(1);
    a.engine = Engine::new(narrower, LocalIdentity::default(), 1, Some(&a.engine));
    a.channel.reconfigured(source);
    a.events.clear();
    a.tick(&mut store, 2 * TICK);
    assert_eq!(a.rejected(), [RejectReason::Unauthorised]);
    assert_eq!(a.weights(), [50.0]);
}
