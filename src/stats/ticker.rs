//! The background task that closes a second of [`Stats`] every second.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::time::MissedTickBehavior;

use super::Stats;

/// How often a second is closed.
const TICK: Duration = Duration::from_secs(1);

/// Calls [`Stats::tick`] every second until shutdown.
pub struct StatsTicker {
    stats: Arc<Stats>,
}

impl StatsTicker {
    /// Ticks `stats`.
    pub fn new(stats: Arc<Stats>) -> StatsTicker {
        StatsTicker { stats }
    }
}

#[async_trait]
impl BackgroundService for StatsTicker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut interval = tokio::time::interval(TICK);
        // A late tick closes one longer second (its real length is recorded), then the ticks
        // go on a second apart: no burst of near-empty seconds to catch up.
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick completes at once; the first second ends one period later.
        interval.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = interval.tick() => self.stats.tick(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Scope;

    #[tokio::test(start_paused = true)]
    async fn ticks_every_second_until_shutdown() {
        let stats = Arc::new(Stats::new(Duration::from_secs(60)));
        let scope = Scope::Service("web".into());
        let cell = stats.cell(&scope, "stable");
        let live = |stats: &Stats| {
            let figures = stats.window(&scope, "stable", Duration::ZERO);
            figures.map(|f| f.requests)
        };
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let ticker = StatsTicker::new(stats.clone());
        let task = tokio::spawn(async move { ticker.start(shutdown).await });
        cell.record(200, Duration::from_millis(1), 0, 0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            live(&stats),
            Some(1),
            "no tick before the first second ends"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(live(&stats), Some(0), "the tick at 1 s closed the second");
        let minute = stats.window(&scope, "stable", Duration::from_secs(60));
        assert_eq!(minute.map(|f| f.requests), Some(1));
        stop.send(true).expect("the ticker listens");
        let stopped = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(
            matches!(stopped, Ok(Ok(()))),
            "the ticker stops on shutdown"
        );
    }
}
