//! The domain metrics projection: the fold of `eucora_projections::metrics`, kept in memory and
//! rebuilt from position 0 whenever a process starts.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use eucora_projections::metrics::Metrics;

use super::{Event, Projection, ProjectionError, RunnerStatus};
use crate::store::{Checkpoint, Store};

/// The projection's name (runner status, `eucora_projection_lag_*{projection}`).
pub const METRICS: &str = "metrics";

/// Feeds the metrics fold.
pub struct MetricsProjection {
    metrics: Arc<RwLock<Metrics>>,
}

/// What the HTTP side reads: the rendered metrics, once the runner has caught up.
#[derive(Clone)]
pub struct MetricsView {
    metrics: Arc<RwLock<Metrics>>,
    status: Arc<RunnerStatus>,
}

impl MetricsProjection {
    /// The projection, and the view of it that `status`'s runner serves once caught up.
    pub fn new(app_label_limit: usize, status: Arc<RunnerStatus>) -> (Self, MetricsView) {
        let metrics = Arc::new(RwLock::new(Metrics::new(app_label_limit)));
        (
            MetricsProjection {
                metrics: metrics.clone(),
            },
            MetricsView { metrics, status },
        )
    }
}

impl MetricsView {
    /// The domain metrics' exposition text, once every projection has caught up (so a scrape
    /// never sees a half-replayed state).
    pub fn render(&self) -> Option<String> {
        if !self.status.caught_up() {
            return None;
        }
        Some(self.render_now())
    }

    /// The exposition text as the fold stands, caught up or not.
    pub fn render_now(&self) -> String {
        self.metrics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .render()
    }
}

#[async_trait]
impl Projection for MetricsProjection {
    fn name(&self) -> &'static str {
        METRICS
    }

    async fn resume(&mut self, _store: &Store) -> Result<Checkpoint, ProjectionError> {
        Ok(Checkpoint::default())
    }

    async fn apply(&mut self, _store: &Store, events: &[Event]) -> Result<(), ProjectionError> {
        let mut metrics = self.metrics.write().unwrap_or_else(|e| e.into_inner());
        // Every stream's events: a row that does not decode is passed over, as by every
        // projection (the runner names it).
        for e in events {
            if let Ok(event) = &e.event {
                metrics.apply_stream(e.row.position, event);
            }
        }
        Ok(())
    }
}
