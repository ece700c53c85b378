//! What the rest of the service sees of the projection runner: whether it caught up, each
//! projection's progress and lag, the rows none can read, and the wake-up after a commit.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::store::Checkpoint;

/// What the rest of the service sees of the runner: whether it caught up, each projection's
/// progress, and the wake-up the write side rings after a commit.
pub struct RunnerStatus {
    pub(super) wake: Notify,
    /// Rows read from the store, all projections together.
    pub(super) rows_read: AtomicU64,
    /// Events in the store when the runner started (i64::MAX until counted).
    pub(super) head_at_start: AtomicI64,
    /// Events in the store when last counted.
    pub(super) head: AtomicI64,
    pub(super) caught_up: AtomicBool,
    /// Each projection's progress, in registration order.
    pub(super) applied: Mutex<Vec<Applied>>,
    /// Counts every checkpoint moved, so a reader waiting for one (`?min_index`) wakes.
    pub(super) progress: tokio::sync::watch::Sender<u64>,
    /// Stored rows no projection can read, by position, with why.
    pub(super) unreadable: Mutex<std::collections::BTreeMap<i64, String>>,
}

impl RunnerStatus {
    pub(super) fn new() -> Self {
        RunnerStatus {
            wake: Notify::new(),
            rows_read: AtomicU64::new(0),
            head_at_start: AtomicI64::new(i64::MAX),
            head: AtomicI64::new(0),
            caught_up: AtomicBool::new(false),
            applied: Mutex::new(Vec::new()),
            progress: tokio::sync::watch::Sender::new(0),
            unreadable: Mutex::default(),
        }
    }

    /// Stored rows that every projection passed over, by position, with why: rows that do not
    /// decode, and (PostgreSQL) rows whose transaction id no snapshot will ever reach.
    pub fn unreadable(&self) -> Vec<(i64, String)> {
        self.unreadable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(p, why)| (*p, why.clone()))
            .collect()
    }

    /// Records an unreadable row, logging it the first time.
    pub(super) fn report_unreadable(&self, position: i64, why: String) {
        let mut known = self.unreadable.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::btree_map::Entry::Vacant(entry) = known.entry(position) {
            tracing::error!(position, reason = %why, "a stored event cannot be read; every projection passes over it");
            entry.insert(why);
        }
    }

    /// Tells the runner that this process committed events.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether every projection has read every event the store held at start-up, and to the end
    /// of what was readable then.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Rows read from the store so far: once per event for all projections that share a lane.
    pub fn rows_read(&self) -> u64 {
        self.rows_read.load(Ordering::Acquire)
    }

    /// Events stored but not yet applied, per projection, as of the last count.
    pub fn lag(&self) -> Vec<(&'static str, i64)> {
        let head = self.head.load(Ordering::Acquire);
        self.applied()
            .iter()
            .map(|a| (a.name, (head - a.at.ordinal).max(0)))
            .collect()
    }

    /// How long the newest event each projection applied took from its recorded time (stamped
    /// as its command was decided, just before the commit) to being applied: commit-to-visible,
    /// measured live. 0 before a projection applied anything in this process.
    pub fn lag_seconds(&self) -> Vec<(&'static str, f64)> {
        self.applied()
            .iter()
            .map(|a| (a.name, a.lag_seconds))
            .collect()
    }

    /// Where projection `name` stands, if it is registered.
    pub fn checkpoint(&self, name: &str) -> Option<Checkpoint> {
        self.applied().iter().find(|a| a.name == name).map(|a| a.at)
    }

    /// Wakes at every checkpoint moved from now on.
    pub fn progress(&self) -> tokio::sync::watch::Receiver<u64> {
        self.progress.subscribe()
    }

    pub(super) fn applied(&self) -> std::sync::MutexGuard<'_, Vec<Applied>> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that projection `index` stands at `at`; `newest`, the recorded time of the
    /// newest event it just applied, if it applied any.
    pub(super) fn set_applied(&self, index: usize, at: Checkpoint, newest: Option<DateTime<Utc>>) {
        if let Some(slot) = self.applied().get_mut(index) {
            slot.at = at;
            if let Some(newest) = newest {
                slot.lag_seconds =
                    ((Utc::now() - newest).num_microseconds().unwrap_or(0) as f64 / 1e6).max(0.0);
            }
        }
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// One projection's progress as the runner reports it.
pub(super) struct Applied {
    pub(super) name: &'static str,
    pub(super) at: Checkpoint,
    pub(super) lag_seconds: f64,
}
