//! The steering goals (tail latency against Envoy's balancers, shift and
//! recovery times, exact splits), checked in the deterministic simulator
//! (`sim`) with the default scheduler and fixed seeds, against models of
//! ROUND_ROBIN and LEAST_REQUEST run on the same load.
//!
//! The table behind the README's figures:
//! `cargo test --release -p tideway-filter --test steering_sim -- --ignored --nocapture`

mod sim;

use sim::{PolicyKind, Run, Scenario, MS, S};

/// The rounds: every threshold must hold for each of them.
const SEEDS: [u64; 3] = [1, 2, 3];

struct Compared {
    tideway: Run,
    round_robin: Run,
    least_request: Run,
}

fn compare(scenario: &Scenario, seed: u64) -> Compared {
    Compared {
        tideway: sim::run(scenario, PolicyKind::Tideway, seed),
        round_robin: sim::run(scenario, PolicyKind::RoundRobin, seed),
        least_request: sim::run(scenario, PolicyKind::LeastRequest, seed),
    }
}

fn check_one_slow(slower: f64, connections: usize) {
    let mut scenario = sim::one_slow(slower, connections);
    // Shorter than the table's rounds (20 s), to keep the debug-build test
    // quick: about the same number of requests at every connection count,
    // and at least one re-measurement of the slow destination.
    scenario.duration = if connections >= 128 { 5 * S } else { 9 * S };
    for seed in SEEDS {
        let c = compare(&scenario, seed);
        let share = c.tideway.share(2);
        let p99 = c.tideway.quantile_ms(0.99);
        let (rr, lr) = (
            c.round_robin.quantile_ms(0.99),
            c.least_request.quantile_ms(0.99),
        );
        let ctx = format!(
            "{} seed {seed}: slow share {:.2}%, p99 {p99:.1} ms (RR {rr:.1}, LR {lr:.1}), {:.0} req/s (LR {:.0})",
            scenario.name,
            share * 100.0,
            c.tideway.throughput(),
            c.least_request.throughput()
        );
        assert!(share <= 0.005, "{ctx}");
        assert!(p99 <= 0.5 * rr, "{ctx}");
        assert!(p99 <= 0.8 * lr, "{ctx}");
        assert!(
            c.tideway.throughput() >= c.least_request.throughput(),
            "{ctx}"
        );
    }
}

#[test]
fn one_destination_3x_slower() {
    for connections in [8, 32, 128] {
        check_one_slow(3.0, connections);
    }
}

#[test]
fn one_destination_6x_slower() {
    for connections in [8, 32, 128] {
        check_one_slow(6.0, connections);
    }
}

#[test]
fn one_destination_10x_slower() {
    for connections in [8, 32, 128] {
        check_one_slow(10.0, connections);
    }
}

const SLOW_AT: u64 = 5 * S;
const RECOVER_AT: u64 = 15 * S;

#[test]
fn a_slowed_heavy_destination_loses_its_traffic_within_a_second_and_gets_it_back() {
    let scenario = sim::weighted_slowdown(SLOW_AT, RECOVER_AT);
    for seed in SEEDS {
        let run = sim::run(&scenario, PolicyKind::Tideway, seed);
        let before = run.share_between(0, S, SLOW_AT);
        let settled = sim::settles_below(&run, 0, 0.02, SLOW_AT, RECOVER_AT, 100 * MS);
        let back = sim::reaches(&run, 0, before - 0.05, RECOVER_AT, 500 * MS);
        let ctx = format!(
            "seed {seed}: share before {:.1}%, ≤ 2% after {settled:?} ns, back to {:.1}% after {back:?} ns",
            before * 100.0,
            (before - 0.05) * 100.0
        );
        assert!(settled.is_some_and(|t| t <= S), "{ctx}");
        assert!(back.is_some_and(|t| t <= 5 * S), "{ctx}");
    }
}

/// Destination 0's largest share in any 250 ms window of `[from, to)`.
fn worst_window(run: &Run, from: u64, to: u64) -> f64 {
    (0..(to - from) / (250 * MS))
        .map(|i| {
            let t = from + i * 250 * MS;
            run.share_between(0, t, t + 250 * MS)
        })
        .fold(0.0, f64::max)
}

/// The demo's swing-back. On a loaded host (worker pauses, backend
/// hiccups) a fast cluster's estimate jumped above the slowed one's on one
/// late answer, and a shunned destination is not sampled again for a
/// half-life: with the rise believed at once, the 10× slower cluster got
/// 6.9–23.5% of the slow phase (32–40% in its worst 250 ms) and the
/// phase's p99 was 0.78–0.96× ROUND_ROBIN's, over these seeds. It must stay
/// away from the first second of the slowdown until it recovers, and come
/// back.
#[test]
fn on_a_loaded_host_a_slowed_cluster_gets_no_traffic_back_until_it_recovers() {
    let (slow_at, recover_at) = (3 * S, 9 * S);
    let scenario = sim::demo_slowdown(slow_at, recover_at, sim::loaded_host());
    for seed in SEEDS {
        let run = sim::run(&scenario, PolicyKind::Tideway, seed);
        let rr = sim::run(&scenario, PolicyKind::RoundRobin, seed);
        let worst = worst_window(&run, slow_at + S, recover_at);
        let during = |r: &Run, q: f64| r.quantile_between_ms(q, slow_at, recover_at);
        let back = sim::reaches(&run, 0, 0.2, recover_at, 500 * MS);
        let ctx = format!(
            "seed {seed}: slowed cluster's share {:.2}% in the slow phase, at most {:.1}% in any 250 ms after its first second; p99 {:.1} ms (RR {:.1}); back to 20% after {back:?} ns",
            run.share_between(0, slow_at, recover_at) * 100.0,
            worst * 100.0,
            during(&run, 0.99),
            during(&rr, 0.99),
        );
        eprintln!("{ctx}");
        assert!(worst <= 0.02, "{ctx}");
        // The noise itself sets much of the tail (a pause delays whatever
        // is in flight), so the bar is lower than in a quiet run; the swing
        // put Tideway's p99 at 0.78–0.96× ROUND_ROBIN's.
        assert!(during(&run, 0.99) <= 0.85 * during(&rr, 0.99), "{ctx}");
        assert!(back.is_some_and(|t| t <= 5 * S), "{ctx}");
    }
}

/// The swing-back on a heavily loaded host. The busy fast clusters catch
/// every worker pause in their peak-EWMAs; the shunned slow one, sampled
/// once a half-life, catches none, and has the best peak for seconds at a
/// time. While the floors were judged against the floor of the best peak
/// (its own), nothing else told it apart, and it got 16–61% of some 250 ms
/// after the slow phase's first second over these seeds (the demo test saw
/// 50% for two seconds on real Envoy). Judged against the lowest floor it
/// gets at most 1.3–7.9%.
#[test]
fn on_a_heavily_loaded_host_the_shunned_slow_cluster_does_not_draw_traffic_back() {
    let (slow_at, recover_at) = (3 * S, 9 * S);
    let scenario = sim::demo_slowdown(slow_at, recover_at, sim::heavily_loaded_host());
    for seed in 1..=10 {
        let run = sim::run(&scenario, PolicyKind::Tideway, seed);
        let worst = worst_window(&run, slow_at + S, recover_at);
        assert!(
            worst <= 0.10,
            "seed {seed}: the slowed cluster got {:.1}% of a 250 ms window after the slow phase's first second",
            worst * 100.0
        );
    }
}

#[test]
fn equal_destinations_follow_the_base_weights_at_least_requests_throughput() {
    for weights in [[1.0, 1.0, 1.0], [70.0, 20.0, 10.0]] {
        let scenario = sim::all_equal(weights, 32);
        let total: f64 = weights.iter().sum();
        for seed in SEEDS {
            let c = compare(&scenario, seed);
            for (d, w) in weights.iter().enumerate() {
                let share = c.tideway.share(d);
                assert!(
                    (share - w / total).abs() <= 0.02,
                    "{} seed {seed}: destination {d} got {:.2}%",
                    scenario.name,
                    share * 100.0
                );
            }
            if weights[0] == weights[1] {
                let (t, lr) = (c.tideway.throughput(), c.least_request.throughput());
                assert!(
                    t >= 0.95 * lr,
                    "{} seed {seed}: {t:.0} vs LR {lr:.0}",
                    scenario.name
                );
            }
        }
    }
}

#[test]
fn with_latency_and_load_off_the_split_is_exact() {
    let mut scenario = sim::all_equal([70.0, 20.0, 10.0], 32);
    scenario.destinations[0].service_ms = 80.0;
    scenario.scheduler =
        Some(r#"{"weights":{"latency":0,"load":0,"cost":0.1,"affinity":0.2}}"#.into());
    let run = sim::run(&scenario, PolicyKind::Tideway, 1);
    let n = run.samples.len() as f64;
    for (d, w) in [0.7, 0.2, 0.1].iter().enumerate() {
        let got = run.samples.iter().filter(|s| s.destination == d).count() as f64 / n;
        assert!((got - w).abs() <= 0.001, "destination {d}: {got}");
    }
}

/// The tables: every scenario, every round, every policy.
#[test]
#[ignore = "prints the table; run with --ignored --nocapture (release)"]
fn print_table() {
    print_tail_table();
    print_shift_table();
    print_demo_table();
    print_split_table();
}

/// One slow destination among three, and all equal: the slow one's share,
/// the tail and throughput against ROUND_ROBIN and LEAST_REQUEST.
fn print_tail_table() {
    println!("| Scenario | Round | Policy | slow share % | p50 ms | p99 ms | req/s | p99 ÷ RR | p99 ÷ LR | req/s ÷ LR |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut scenarios: Vec<(Scenario, usize)> = Vec::new();
    for slower in [3.0, 6.0, 10.0] {
        for connections in [8, 32, 128] {
            scenarios.push((sim::one_slow(slower, connections), 2));
        }
    }
    scenarios.push((sim::all_equal([1.0, 1.0, 1.0], 32), 2));
    // For information (no goal): destinations that serve 8 requests at a
    // time, so avoiding the slow one makes the fast ones queue.
    let mut limited = sim::one_slow(6.0, 32);
    limited.name = "one 6× slower, 32 conns, 8 served at a time".into();
    for d in &mut limited.destinations {
        d.limit = 8;
    }
    scenarios.push((limited, 2));
    for (scenario, slow) in &scenarios {
        print_tail_rows(scenario, *slow);
    }
}

/// A scenario's rows: each round's policies, then Tideway's range.
fn print_tail_rows(scenario: &Scenario, slow: usize) {
    let mut mins = [f64::INFINITY; 4];
    let mut maxs = [f64::NEG_INFINITY; 4];
    for seed in SEEDS {
        let c = compare(scenario, seed);
        let (rr, lr) = (
            c.round_robin.quantile_ms(0.99),
            c.least_request.quantile_ms(0.99),
        );
        let lr_tput = c.least_request.throughput();
        for (policy, run) in [
            ("Tideway", &c.tideway),
            ("ROUND_ROBIN", &c.round_robin),
            ("LEAST_REQUEST", &c.least_request),
        ] {
            let p99 = run.quantile_ms(0.99);
            println!(
                "| {} | {seed} | {policy} | {:.2} | {:.1} | {:.1} | {:.0} | {:.3} | {:.3} | {:.3} |",
                scenario.name,
                run.share(slow) * 100.0,
                run.quantile_ms(0.5),
                p99,
                run.throughput(),
                p99 / rr,
                p99 / lr,
                run.throughput() / lr_tput
            );
            if policy == "Tideway" {
                let v = [
                    run.share(slow) * 100.0,
                    p99 / rr,
                    p99 / lr,
                    run.throughput() / lr_tput,
                ];
                for i in 0..4 {
                    mins[i] = mins[i].min(v[i]);
                    maxs[i] = maxs[i].max(v[i]);
                }
            }
        }
    }
    println!(
        "| {} | min–max | Tideway | {:.2}–{:.2} | | | | {:.3}–{:.3} | {:.3}–{:.3} | {:.3}–{:.3} |",
        scenario.name, mins[0], maxs[0], mins[1], maxs[1], mins[2], maxs[2], mins[3], maxs[3]
    );
}

/// The weighted scenario's shift away from a slowed destination and back.
fn print_shift_table() {
    let scenario = sim::weighted_slowdown(SLOW_AT, RECOVER_AT);
    println!();
    println!("| 70/20/10, a 10× slower at 5 s, back at 15 s | a before % | a ≤ 2% after ms | a back after ms | a during % |");
    println!("|---|---|---|---|---|");
    for seed in SEEDS {
        let run = sim::run(&scenario, PolicyKind::Tideway, seed);
        let before = run.share_between(0, S, SLOW_AT);
        let settled = sim::settles_below(&run, 0, 0.02, SLOW_AT, RECOVER_AT, 100 * MS);
        let back = sim::reaches(&run, 0, before - 0.05, RECOVER_AT, 500 * MS);
        println!(
            "| round {seed} | {:.1} | {} | {} | {:.2} |",
            before * 100.0,
            settled.map_or("never".into(), |t| (t / MS).to_string()),
            back.map_or("never".into(), |t| (t / MS).to_string()),
            run.share_between(0, SLOW_AT + S, RECOVER_AT) * 100.0
        );
    }
}

/// The demo's fleet on a quiet and a loaded host.
fn print_demo_table() {
    let (slow_at, recover_at) = (3 * S, 9 * S);
    println!();
    println!("| demo fleet, hangzhou (2 ms) 10× slower 3–9 s, 2 workers | round | host | policy | its share 3–9 s % | worst 250 ms after 4 s % | p99 3–9 s ms |");
    println!("|---|---|---|---|---|---|---|");
    for (host, noise) in [
        ("quiet", sim::Noise::default()),
        ("loaded", sim::loaded_host()),
    ] {
        let scenario = sim::demo_slowdown(slow_at, recover_at, noise);
        for seed in SEEDS {
            for policy in [
                PolicyKind::Tideway,
                PolicyKind::RoundRobin,
                PolicyKind::LeastRequest,
            ] {
                let run = sim::run(&scenario, policy, seed);
                println!(
                    "| | {seed} | {host} | {} | {:.2} | {:.1} | {:.1} |",
                    policy.label(),
                    run.share_between(0, slow_at, recover_at) * 100.0,
                    worst_window(&run, slow_at + S, recover_at) * 100.0,
                    run.quantile_between_ms(0.99, slow_at, recover_at)
                );
            }
        }
    }
}

/// The split among equal destinations.
fn print_split_table() {
    for weights in [[1.0, 1.0, 1.0], [70.0, 20.0, 10.0]] {
        let scenario = sim::all_equal(weights, 32);
        for seed in SEEDS {
            let run = sim::run(&scenario, PolicyKind::Tideway, seed);
            let shares: Vec<String> = (0..3)
                .map(|d| format!("{:.2}", run.share(d) * 100.0))
                .collect();
            println!(
                "| {} round {seed} | split % {} |",
                scenario.name,
                shares.join(" / ")
            );
        }
    }
}
