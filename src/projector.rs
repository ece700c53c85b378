//! The projection runner: feeds the global stream to the metrics projection (in memory, rebuilt at
//! start-up) and to the sealer (persisted: its checkpoint is the last seal), catching up and then
//! tailing the store. The fold itself lives in `eucora-projections` and does no
//! I/O; this module owns the reading, the waiting and the "caught up" flag.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use eucora_projections::integrity::Chain;
use eucora_projections::metrics::Metrics;
use tokio::sync::Notify;

use eucora_projections::intent::IntentState;

use crate::store::{Checkpoint, IntentRow, Store, StoreError};

/// The intent read model's name in `projection_checkpoints`.
pub const INTENTS: &str = "intents";
/// Events read per batch.
const BATCH: i64 = 1000;
/// The longest wait between polls when the stream is idle; a write in this process wakes it
/// at once, a write by another process is seen within this time.
const MAX_IDLE_WAIT: Duration = Duration::from_millis(500);

/// Runs this process's projections from the global stream: the metrics fold (in memory), the
/// sealer and the intent read model (persisted, each with its own checkpoint).
pub struct Projector {
    store: Store,
    metrics: RwLock<Metrics>,
    /// Events applied so far.
    applied: AtomicI64,
    /// Events in the store when the runner started; reaching them is "caught up".
    head_at_start: AtomicI64,
    caught_up: AtomicBool,
    /// Events the persisted intent read model has applied (its checkpoint's ordinal).
    intents_applied: AtomicI64,
    /// Events in the store when last counted (at start, then every `RECOUNT`).
    head: AtomicI64,
    wake: Notify,
}

/// How often the runner counts the store's events to report its lag.
const RECOUNT: Duration = Duration::from_secs(5);

impl Projector {
    pub fn new(store: Store, app_label_limit: usize) -> Arc<Self> {
        Arc::new(Projector {
            store,
            metrics: RwLock::new(Metrics::new(app_label_limit)),
            applied: AtomicI64::new(0),
            head_at_start: AtomicI64::new(i64::MAX),
            caught_up: AtomicBool::new(false),
            head: AtomicI64::new(0),
            intents_applied: AtomicI64::new(0),
            wake: Notify::new(),
        })
    }

    /// Whether the projections (metrics and the intent read model) have reached the store's head
    /// as it was at start-up.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// The domain metrics' exposition text, once caught up.
    pub fn render(&self) -> Option<String> {
        if !self.caught_up() {
            return None;
        }
        Some(self.read().render())
    }

    /// Events stored but not yet applied, as of the last count (at most `RECOUNT` old).
    pub fn lag(&self) -> i64 {
        (self.head.load(Ordering::Acquire) - self.applied.load(Ordering::Acquire)).max(0)
    }

    /// Tells the runner that this process appended events.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Metrics> {
        self.metrics.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Seals every readable event past the last seal; returns how many. Several processes may
    /// seal at once: they compute the same seals, and an ordinal already sealed is kept.
    pub async fn seal(&self) -> Result<usize, StoreError> {
        let last = self.store.last_seal().await?;
        let (mut chain, mut after) = match &last {
            Some(seal) => match Chain::resume(seal) {
                Some(chain) => (chain, seal.position),
                None => {
                    return Err(StoreError::Corrupt {
                        position: seal.position,
                        reason: format!("seal #{} has a malformed chain hash", seal.ordinal),
                    })
                }
            },
            None => (Chain::default(), 0),
        };
        let mut total = 0;
        loop {
            let batch = self.store.read_global(after, BATCH).await?;
            let Some(last) = batch.last() else { break };
            after = last.position;
            let seals: Vec<_> = batch.iter().map(|e| chain.seal(&e.row())).collect();
            self.store.insert_seals(&seals).await?;
            total += seals.len();
        }
        Ok(total)
    }

    /// Brings the persisted intent read model up to date from its checkpoint; returns how many
    /// events it applied. Rows only move forward, so another process doing the same is harmless.
    pub async fn project_intents(&self) -> Result<usize, StoreError> {
        let mut checkpoint = self.store.checkpoint(INTENTS).await?;
        self.intents_applied
            .store(checkpoint.ordinal, Ordering::Release);
        let mut total = 0;
        loop {
            let batch = self.store.read_global(checkpoint.position, BATCH).await?;
            if batch.is_empty() {
                break;
            }
            let ids: Vec<String> = batch.iter().map(|e| e.aggregate_id.clone()).collect();
            let mut rows = self.store.intent_rows(&ids).await?;
            let mut changed: Vec<String> = Vec::new();
            for e in &batch {
                let event = e.parse().map_err(|reason| StoreError::Corrupt {
                    position: e.position,
                    reason,
                })?;
                checkpoint = Checkpoint {
                    position: e.position,
                    ordinal: checkpoint.ordinal + 1,
                };
                let current = rows.get(&e.aggregate_id);
                if current.is_some_and(|r| e.sequence as u64 <= r.state.stream_version) {
                    continue; // applied already, by this runner before a restart or by another
                }
                let seq = current.map_or(checkpoint.ordinal, |r| r.seq);
                let folded = IntentState::fold(current.map(|r| r.state.clone()), &event);
                if let Some(state) = folded {
                    rows.insert(e.aggregate_id.clone(), IntentRow { seq, state });
                    changed.push(e.aggregate_id.clone());
                }
            }
            changed.sort();
            changed.dedup();
            let changed: Vec<IntentRow> = changed
                .iter()
                .filter_map(|id| rows.get(id).cloned())
                .collect();
            self.store
                .save_intents(INTENTS, &changed, checkpoint)
                .await?;
            self.intents_applied
                .store(checkpoint.ordinal, Ordering::Release);
            total += batch.len();
        }
        Ok(total)
    }

    /// Records the store's head: once the projection has applied that many events it is caught up.
    pub async fn start(&self) -> Result<(), StoreError> {
        let head = self.store.event_count().await?;
        self.head.store(head, Ordering::Release);
        self.head_at_start.store(head, Ordering::Release);
        Ok(())
    }

    /// Applies every event readable now; returns how many. The next batch is read on another
    /// task while this one is parsed and folded.
    pub async fn poll(&self) -> Result<usize, StoreError> {
        let mut total = 0;
        let after = self.read().position();
        let mut batch = self.store.read_global_payloads(after, BATCH).await?;
        while let Some(last) = batch.last() {
            let next = (batch.len() as i64 == BATCH).then(|| {
                let (store, after) = (self.store.clone(), last.position);
                tokio::spawn(async move { store.read_global_payloads(after, BATCH).await })
            });
            let mut applied = 0;
            let unreadable = {
                let mut metrics = self.metrics.write().unwrap_or_else(|e| e.into_inner());
                let mut unreadable = None;
                for e in &batch {
                    match e.parse() {
                        Ok(event) => metrics.apply(e.position, &event),
                        // Never skip: stop here, so the projection halts at the bad event.
                        Err(reason) => {
                            unreadable = Some(StoreError::Corrupt {
                                position: e.position,
                                reason,
                            });
                            break;
                        }
                    }
                    applied += 1;
                }
                unreadable
            };
            total += applied;
            self.applied.fetch_add(applied as i64, Ordering::AcqRel);
            if let Some(corrupt) = unreadable {
                return Err(corrupt);
            }
            match next {
                Some(next) => batch = joined(next).await?,
                None => break,
            }
        }
        let head = self.head_at_start.load(Ordering::Acquire);
        if !self.caught_up()
            && self.applied.load(Ordering::Acquire) >= head
            && self.intents_applied.load(Ordering::Acquire) >= head
        {
            self.caught_up.store(true, Ordering::Release);
            tracing::info!(
                events = self.applied.load(Ordering::Acquire),
                "metrics projection caught up"
            );
        }
        Ok(total)
    }

    /// Catches up, then tails the store until the process ends. Store errors are logged and
    /// retried with backoff; the projection never skips an event.
    pub async fn run(self: Arc<Self>) {
        let mut wait = Duration::from_millis(10);
        let mut counted = std::time::Instant::now();
        loop {
            if self.head_at_start.load(Ordering::Acquire) == i64::MAX {
                if let Err(e) = self.start().await {
                    tracing::warn!(error = %e, "cannot count events; retrying");
                }
            } else if counted.elapsed() > RECOUNT {
                counted = std::time::Instant::now();
                match self.store.event_count().await {
                    Ok(n) => self.head.store(n, Ordering::Release),
                    Err(e) => tracing::warn!(error = %e, "cannot count events"),
                }
            }
            if let Err(e) = self.seal().await {
                tracing::warn!(error = %e, "cannot seal the event stream; retrying");
            }
            if let Err(e) = self.project_intents().await {
                tracing::warn!(error = %e, "cannot update the intent read model; retrying");
            }
            match self.poll().await {
                // More may be readable at once: poll again without waiting.
                Ok(n) if n > 0 => {
                    wait = Duration::from_millis(10);
                    continue;
                }
                Ok(_) => wait = (wait * 2).min(MAX_IDLE_WAIT),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics projection cannot read the store; retrying");
                    wait = MAX_IDLE_WAIT;
                }
            }
            let _ = tokio::time::timeout(wait, self.wake.notified()).await;
        }
    }
}

/// The result of a task the runner spawned: a panic is passed on, and a task cancelled because
/// the runtime is shutting down reads as the store going away.
pub(crate) async fn joined<T>(
    task: tokio::task::JoinHandle<Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StoreError::Unavailable(sqlx::Error::PoolClosed)),
    }
}
