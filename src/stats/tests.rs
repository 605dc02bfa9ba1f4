//! [`Stats`] end to end: record, tick by hand on a [`ManualClock`], query windows.

use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn service(name: &str) -> Scope {
    Scope::Service(name.into())
}

/// Stats keeping `history` on a clock that moves only when told to.
fn stats(history: Duration) -> (Stats, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    (Stats::with_clock(history, clock.clone()), clock)
}

/// One second passes, then the ticker closes it.
fn next_second(stats: &Stats, clock: &ManualClock) {
    clock.advance(SECOND);
    stats.tick();
}

fn requests(stats: &Stats, scope: &Scope, version: &str, window: Duration) -> Option<u64> {
    stats.window(scope, version, window).map(|f| f.requests)
}

#[test]
fn a_cell_is_registered_once_and_found_by_name() {
    let (stats, _) = stats(DEFAULT_HISTORY);
    let web = service("web");
    let first = stats.cell(&web, "canary");
    assert!(Arc::ptr_eq(&first, &stats.cell(&web, "canary")));
    assert!(!Arc::ptr_eq(&first, &stats.cell(&web, "stable")));
    assert!(!Arc::ptr_eq(
        &first,
        &stats.cell(&Scope::Rule("web".into()), "canary")
    ));
    assert!(stats.window(&web, "beta", SECOND).is_none());
    assert!(stats.window(&service("api"), "canary", SECOND).is_none());
    assert_eq!(requests(&stats, &web, "canary", SECOND), Some(0));
}

#[test]
fn counts_per_cell_and_per_window() {
    let (stats, clock) = stats(DEFAULT_HISTORY);
    let web = service("web");
    let canary = stats.cell(&web, "canary");
    let stable = stats.cell(&web, "stable");
    for _ in 0..3 {
        canary.record(200, ms(5), 0, 0);
    }
    stable.record(200, ms(5), 0, 0);
    // Live, before any tick.
    assert_eq!(requests(&stats, &web, "canary", ms(10)), Some(3));
    next_second(&stats, &clock);
    canary.record(200, ms(5), 0, 0);
    next_second(&stats, &clock);
    canary.record(200, ms(5), 0, 0);
    canary.record(200, ms(5), 0, 0);
    clock.advance(ms(400));
    // Live part (0.4 s, 2), then second 2 (1), then second 1 (3).
    assert_eq!(requests(&stats, &web, "canary", Duration::ZERO), Some(2));
    assert_eq!(requests(&stats, &web, "canary", ms(400)), Some(2));
    assert_eq!(requests(&stats, &web, "canary", ms(401)), Some(3));
    assert_eq!(requests(&stats, &web, "canary", ms(1_400)), Some(3));
    assert_eq!(requests(&stats, &web, "canary", ms(1_401)), Some(6));
    assert_eq!(requests(&stats, &web, "stable", ms(1_401)), Some(1));
    let figures = stats.window(&web, "canary", ms(1_000));
    assert_eq!(figures.map(|f| f.window_seconds), Some(1.4));
}

#[test]
fn five_xx_rate() {
    let (stats, clock) = stats(DEFAULT_HISTORY);
    let web = service("web");
    let cell = stats.cell(&web, "canary");
    let empty = stats.window(&web, "canary", SECOND).expect("registered");
    assert_eq!((empty.requests, empty.error_rate), (0, 0.0));
    assert_eq!((empty.p50_ms, empty.p99_ms), (None, None));
    for status in [200, 500, 503, 404, 0, 599, 600, 302] {
        cell.record(status, ms(1), 0, 0);
    }
    next_second(&stats, &clock);
    let figures = stats.window(&web, "canary", SECOND).expect("registered");
    assert_eq!((figures.requests, figures.errors_5xx), (8, 3));
    assert_eq!(figures.error_rate, 3.0 / 8.0);
}

#[test]
fn goals_keep_their_slot_across_a_reload_that_reorders_them() {
    let (stats, clock) = stats(DEFAULT_HISTORY);
    let ramp = Scope::Rule("ramp".into());
    let cell = stats.cell(&ramp, "canary");
    // Generation 1: goal 0 = signup, goal 1 = checkout.
    let first = stats.goal_map(["signup", "checkout"]);
    cell.record(200, ms(1), first.translate(0b11), first.translate(0b01));
    cell.record(200, ms(1), first.translate(0b01), 0);
    next_second(&stats, &clock);
    // Generation 2: goal 0 = checkout, goal 1 = newsletter, goal 2 = signup.
    let second = stats.goal_map(["checkout", "newsletter", "signup"]);
    cell.record(200, ms(1), second.translate(0b101), second.translate(0b101));
    cell.record(200, ms(1), second.translate(0b010), 0);
    let figures = stats
        .window(&ramp, "canary", Duration::from_secs(60))
        .expect("registered");
    let goal = |name: &str| {
        figures
            .goal(name)
            .map(|g| (g.attempts, g.conversions, g.rate))
    };
    assert_eq!(goal("signup"), Some((3, 2, Some(2.0 / 3.0))));
    assert_eq!(goal("checkout"), Some((2, 1, Some(0.5))));
    assert_eq!(goal("newsletter"), Some((1, 0, Some(0.0))));
    let names: Vec<&str> = figures.goals.iter().map(|g| &*g.name).collect();
    assert_eq!(names, ["signup", "checkout", "newsletter"], "by slot");
    // A goal without traffic in the window is left out.
    let other = stats.cell(&ramp, "stable");
    other.record(200, ms(1), second.translate(0b010), 0);
    let figures = stats.window(&ramp, "stable", SECOND).expect("registered");
    let names: Vec<&str> = figures.goals.iter().map(|g| &*g.name).collect();
    assert_eq!(names, ["newsletter"]);
    assert!(figures.goal("signup").is_none());
}

#[test]
fn seconds_fall_out_of_the_window_and_the_history() {
    let (stats, clock) = stats(Duration::from_secs(10));
    let web = service("web");
    let cell = stats.cell(&web, "canary");
    // Second i (1..=30) holds i requests.
    for i in 1..=30 {
        for _ in 0..i {
            cell.record(200, ms(1), 0, 0);
        }
        next_second(&stats, &clock);
    }
    assert_eq!(
        requests(&stats, &web, "canary", Duration::from_secs(1)),
        Some(30)
    );
    assert_eq!(
        requests(&stats, &web, "canary", Duration::from_secs(3)),
        Some(30 + 29 + 28)
    );
    let ten = stats
        .window(&web, "canary", Duration::from_secs(10))
        .expect("registered");
    assert_eq!(ten.requests, (21..=30).sum::<u64>());
    assert_eq!(ten.window_seconds, 10.0);
    // Longer than the history: what it holds, and says so.
    let hour = stats
        .window(&web, "canary", Duration::from_secs(3_600))
        .expect("registered");
    assert_eq!(hour.requests, (21..=30).sum::<u64>());
    assert_eq!(hour.window_seconds, 10.0);
    // Five quiet seconds push the busiest out of a 10 s window.
    for _ in 0..5 {
        next_second(&stats, &clock);
    }
    assert_eq!(
        requests(&stats, &web, "canary", Duration::from_secs(10)),
        Some((26..=30).sum())
    );
    assert_eq!(
        requests(&stats, &web, "canary", Duration::from_secs(5)),
        Some(0)
    );
}

#[test]
fn right_after_the_start_a_window_covers_what_has_passed() {
    let (stats, clock) = stats(DEFAULT_HISTORY);
    let web = service("web");
    stats.cell(&web, "canary").record(200, ms(1), 0, 0);
    clock.advance(ms(2_500));
    stats.tick();
    clock.advance(ms(250));
    let figures = stats
        .window(&web, "canary", Duration::from_secs(60))
        .expect("registered");
    assert_eq!(figures.window_seconds, 2.75);
    assert_eq!(figures.requests, 1);
}

#[test]
fn a_late_tick_covers_its_real_length() {
    let (stats, clock) = stats(DEFAULT_HISTORY);
    let web = service("web");
    let cell = stats.cell(&web, "canary");
    next_second(&stats, &clock);
    cell.record(200, ms(1), 0, 0);
    // The ticker was held up for 4 s.
    clock.advance(Duration::from_secs(4));
    stats.tick();
    cell.record(200, ms(1), 0, 0);
    next_second(&stats, &clock);
    let two = stats
        .window(&web, "canary", Duration::from_secs(2))
        .expect("registered");
    assert_eq!((two.requests, two.window_seconds), (2, 5.0));
    let one = stats
        .window(&web, "canary", Duration::from_secs(1))
        .expect("registered");
    assert_eq!((one.requests, one.window_seconds), (1, 1.0));
}

#[test]
fn increments_are_exact_across_ticks() {
    let (stats, clock) = stats(DEFAULT_HISTORY);
    let web = service("web");
    let cell = stats.cell(&web, "canary");
    let mut total = 0;
    for i in 0..100u64 {
        for _ in 0..i % 7 {
            cell.record(200, ms(i), 0, 0);
            total += 1;
        }
        if i % 3 == 0 {
            next_second(&stats, &clock);
        }
    }
    assert_eq!(
        requests(&stats, &web, "canary", DEFAULT_HISTORY),
        Some(total)
    );
}

#[test]
fn concurrent_records_lose_nothing() {
    const THREADS: u64 = 4;
    const RECORDS: u64 = 100_000;
    let (stats, clock) = stats(Duration::from_secs(7_200));
    let stats = Arc::new(stats);
    let web = service("web");
    let cell = stats.cell(&web, "canary");
    let map = stats.goal_map(["signup", "checkout"]);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let cell = &cell;
            let map = &map;
            scope.spawn(move || {
                for i in 0..RECORDS {
                    let status = if i % 10 == 0 { 503 } else { 200 };
                    let attempts = map.translate(if i % 2 == 0 { 0b11 } else { 0b01 });
                    let conversions = map.translate(if i % 4 == 0 { 0b10 } else { 0 });
                    cell.record(
                        status,
                        Duration::from_micros(i % 1_000 + t),
                        attempts,
                        conversions,
                    );
                }
            });
        }
        // Ticks close seconds while the workers record.
        scope.spawn(|| {
            for _ in 0..1_000 {
                next_second(&stats, &clock);
                std::thread::yield_now();
            }
        });
    });
    next_second(&stats, &clock);
    let figures = stats
        .window(&web, "canary", Duration::from_secs(7_200))
        .expect("registered");
    assert_eq!(figures.requests, THREADS * RECORDS);
    assert_eq!(figures.errors_5xx, THREADS * RECORDS / 10);
    let signup = figures.goal("signup").map(|g| (g.attempts, g.conversions));
    assert_eq!(signup, Some((THREADS * RECORDS, 0)));
    let checkout = figures
        .goal("checkout")
        .map(|g| (g.attempts, g.conversions));
    assert_eq!(
        checkout,
        Some((THREADS * RECORDS / 2, THREADS * RECORDS / 4))
    );
}

#[test]
fn quantiles_of_a_window() {
    let (stats, clock) = stats(DEFAULT_HISTORY);
    let web = service("web");
    let cell = stats.cell(&web, "canary");
    // 1..=1000 ms, one request each, spread over two seconds.
    for i in 1..=1_000 {
        cell.record(200, ms(i), 0, 0);
        if i == 500 {
            next_second(&stats, &clock);
        }
    }
    let figures = stats
        .window(&web, "canary", Duration::from_secs(60))
        .expect("registered");
    for (estimate, exact) in [
        (figures.p50_ms, 500.0),
        (figures.p90_ms, 900.0),
        (figures.p99_ms, 990.0),
    ] {
        let estimate = estimate.expect("requests");
        assert!(
            (estimate - exact).abs() <= exact / 16.0,
            "{estimate} ms for {exact} ms"
        );
    }
    let p999 = figures.quantile(0.999).expect("requests");
    assert!(p999.abs_diff(ms(999)) <= ms(999) / 16, "{p999:?}");
    assert_eq!(figures.latency.count(), 1_000);
    // The second second alone: 501..=1000 ms.
    let live = stats
        .window(&web, "canary", Duration::ZERO)
        .expect("registered");
    let p50 = live.p50_ms.expect("requests");
    assert!((p50 - 750.0).abs() <= 750.0 / 16.0, "{p50} ms");
}

#[test]
fn all_lists_every_cell_by_scope_then_version_as_json() {
    let (stats, clock) = stats(DEFAULT_HISTORY);
    let map = stats.goal_map(["signup"]);
    stats
        .cell(&Scope::Rule("ramp".into()), "canary")
        .record(503, ms(2), 0, 0);
    stats.cell(&service("web"), "stable");
    stats
        .cell(&service("api"), "stable")
        .record(200, ms(2), map.translate(1), map.translate(1));
    clock.advance(ms(500));
    let all = stats.all(Duration::from_secs(60));
    let keys: Vec<String> = all
        .iter()
        .map(|c| format!("{} {}", c.scope, c.version))
        .collect();
    assert_eq!(
        keys,
        [
            "service api stable",
            "service web stable",
            "rule ramp canary"
        ]
    );
    let json = serde_json::to_value(&all[0]).expect("serializable");
    assert_eq!(
        json,
        serde_json::json!({
            "scope": { "kind": "service", "name": "api" },
            "version": "stable",
            "figures": {
                "window_seconds": 0.5,
                "requests": 1,
                "errors_5xx": 0,
                "error_rate": 0.0,
                // 2 ms lies in [1_966_080, 2_097_152) ns: midpoint 2.031616 ms.
                "p50_ms": 2.031616,
                "p90_ms": 2.031616,
                "p99_ms": 2.031616,
                "goals": [{ "name": "signup", "attempts": 1, "conversions": 1, "rate": 1.0 }]
            }
        })
    );
    let idle = serde_json::to_value(&all[1].figures).expect("serializable");
    assert_eq!(idle["p99_ms"], serde_json::Value::Null);
    assert_eq!(all[2].figures.error_rate, 1.0);
}

#[test]
fn memory_follows_traffic() {
    let (stats, clock) = stats(Duration::from_secs(60));
    let web = service("web");
    for version in ["a", "b", "c"] {
        stats.cell(&web, version);
    }
    let busy = stats.cell(&web, "a");
    for _ in 0..120 {
        // Two latency buckets and one 5xx counter move each second, in one cell of three.
        busy.record(200, ms(1), 0, 0);
        busy.record(500, ms(100), 0, 0);
        next_second(&stats, &clock);
    }
    assert_eq!(stats.lock().history.size(), (60, 60 * 3));
    assert_eq!(std::mem::size_of::<Entry>(), 16);
    // The `moved` mask, 186 counters, and the place of the goal counters
    // (made only once the process has goals).
    assert_eq!(std::mem::size_of::<Cell>(), 8 + 186 * 8 + 16);
    // The busy cell's values at the last tick; none for the idle ones.
    let at_tick: Vec<usize> = stats.lock().cells.iter().map(|c| c.at_tick.len()).collect();
    assert_eq!(at_tick, [186, 0, 0]);
    // Goals give every cell, old and new, its goal counters; ticks then read them too.
    let _ = stats.goal_map(["signup"]);
    busy.record(200, ms(1), 0b1, 0b1);
    stats.cell(&web, "d").record(200, ms(1), 0b1, 0);
    next_second(&stats, &clock);
    let at_tick: Vec<usize> = stats.lock().cells.iter().map(|c| c.at_tick.len()).collect();
    assert_eq!(at_tick, [314, 0, 0, 314]);
    let goal = |v: &str| {
        let figures = stats.window(&web, v, SECOND).expect("registered");
        figures.goal("signup").map(|g| (g.attempts, g.conversions))
    };
    assert_eq!((goal("a"), goal("d")), (Some((1, 1)), Some((1, 0))));
}

/// A tick reads only the cells recorded since the last one, and loses no count of the others:
/// a cell idle for a tick and busy again reports every request.
#[test]
fn ticks_skip_idle_cells_and_lose_nothing() {
    let (stats, clock) = stats(Duration::from_secs(60));
    let web = service("web");
    let busy = stats.cell(&web, "a");
    let idle = stats.cell(&web, "b");
    busy.record(200, ms(1), 0, 0);
    idle.record(500, ms(1), 0, 0);
    next_second(&stats, &clock);
    assert!(
        busy.take_moved() == 0 && idle.take_moved() == 0,
        "the tick took both flags"
    );
    busy.record(200, ms(1), 0, 0);
    next_second(&stats, &clock);
    next_second(&stats, &clock);
    idle.record(500, ms(1), 0, 0);
    next_second(&stats, &clock);
    let requests = |v: &str, secs: u64| {
        let window = Duration::from_secs(secs);
        stats.window(&web, v, window).expect("registered").requests
    };
    assert_eq!((requests("a", 10), requests("b", 10)), (2, 2));
    // Each count lies in the second it was made in: the last second has b's alone.
    assert_eq!((requests("a", 1), requests("b", 1)), (0, 1));
    let errors = stats.window(&web, "b", Duration::from_secs(10));
    assert_eq!(errors.expect("registered").errors_5xx, 2);
}
