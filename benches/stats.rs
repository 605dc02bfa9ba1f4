//! The cost of the windowed per-version figures: what a request pays, and what a query pays.
//!
//! `cargo bench --bench stats`. Five measurements:
//!
//! - `record`: [`Cell::record`] of a 200 with a latency cycling through 64 values (one
//!   thread, so no cache line moves between cores);
//! - `record+goals`: the same with two goal attempts and one conversion, masks translated by a
//!   [`GoalMap`] as the proxy would;
//! - `tick`: closing a second of 8 cells, 64 requests recorded in it;
//! - `window-60s`: one cell's figures over a 60 s history of 8 busy cells (200 requests a
//!   second each, latencies over about 40 buckets, two goals): the rollout check;
//! - `all-60s`: every cell's figures over the same history: `GET /-/stats`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use graygate::stats::{Cell, GoalMap, ManualClock, Scope, Stats};

const CELLS: usize = 8;
const SECONDS: usize = 60;
const PER_SECOND: u64 = 200;

/// 64 latencies from about 0.2 ms to 2 s, log-spread.
fn latencies() -> Vec<Duration> {
    (0..64u32)
        .map(|i| Duration::from_micros((200.0 * 10f64.powf(f64::from(i) / 16.0)) as u64))
        .collect()
}

/// `CELLS` cells (two scopes, four versions) on a hand-moved clock, and their goal map.
struct Fixture {
    stats: Stats,
    clock: Arc<ManualClock>,
    cells: Vec<(Scope, &'static str, Arc<Cell>)>,
    goals: GoalMap,
}

fn fixture() -> Fixture {
    let clock = Arc::new(ManualClock::new());
    let stats = Stats::with_clock(Duration::from_secs(SECONDS as u64), clock.clone());
    let mut cells = Vec::new();
    for scope in [Scope::Service("web".into()), Scope::Rule("ramp".into())] {
        for version in ["stable", "canary", "beta", "dev"] {
            let cell = stats.cell(&scope, version);
            cells.push((scope.clone(), version, cell));
        }
    }
    assert_eq!(cells.len(), CELLS);
    let goals = stats.goal_map(["signup", "checkout"]);
    Fixture {
        stats,
        clock,
        cells,
        goals,
    }
}

fn record(c: &mut Criterion) {
    let Fixture { cells, goals, .. } = fixture();
    let cell = &cells[0].2;
    let latencies = latencies();
    let mut i = 0;
    c.bench_function("record", |b| {
        b.iter(|| {
            i = (i + 1) % latencies.len();
            cell.record(black_box(200), latencies[i], 0, 0);
        })
    });
    c.bench_function("record+goals", |b| {
        b.iter(|| {
            i = (i + 1) % latencies.len();
            let attempts = goals.translate(black_box(0b11));
            let conversions = goals.translate(black_box(0b01));
            cell.record(black_box(200), latencies[i], attempts, conversions);
        })
    });
}

fn tick(c: &mut Criterion) {
    let Fixture {
        stats,
        clock,
        cells,
        ..
    } = fixture();
    let latencies = latencies();
    c.bench_function("tick", |b| {
        b.iter(|| {
            for (i, latency) in latencies.iter().enumerate() {
                cells[i % CELLS].2.record(200, *latency, 0, 0);
            }
            clock.advance(Duration::from_secs(1));
            stats.tick();
        })
    });
}

fn window(c: &mut Criterion) {
    let Fixture {
        stats,
        clock,
        cells,
        goals,
    } = fixture();
    let latencies = latencies();
    for _ in 0..SECONDS {
        for (_, _, cell) in &cells {
            for n in 0..PER_SECOND {
                // Mostly fast, a tail over the slower half: about 40 buckets per second.
                let latency = latencies[(n * n % 64) as usize];
                let status = if n % 50 == 0 { 503 } else { 200 };
                let attempts = goals.translate(if n % 3 == 0 { 0b11 } else { 0b01 });
                cell.record(status, latency, attempts, goals.translate(n % 2));
            }
        }
        clock.advance(Duration::from_secs(1));
        stats.tick();
    }
    let minute = Duration::from_secs(SECONDS as u64);
    let (scope, version, _) = &cells[1];
    let figures = stats.window(scope, version, minute).expect("registered");
    assert_eq!(figures.requests, SECONDS as u64 * PER_SECOND);
    c.bench_function("window-60s", |b| {
        b.iter(|| stats.window(black_box(scope), version, minute))
    });
    c.bench_function("all-60s", |b| b.iter(|| stats.all(black_box(minute))));
}

criterion_group!(benches, record, tick, window);
criterion_main!(benches);
