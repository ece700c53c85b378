//! The runner: lanes of projections that stand at the same point, each step reading the stream
//! once for a lane and applying it to each of its projections, and the status the rest of the
//! service sees.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::store::{Checkpoint, Columns, Store, StoreError};

use super::status::{Applied, RunnerStatus};
use super::stream::{decode_rows, read_ahead, Kept, Plan, QUERY_BATCHES};
use super::{Event, Projection, ProjectionError, RunError, UNREACHABLE};

/// Events read per batch by `eucora serve`.
pub const BATCH: i64 = 1000;
/// Batches smaller than this are applied to the projections in turn on the runner's task; larger
/// ones on a task per projection at once (tailing, a step finds a few events, and handing them
/// to other threads would cost more than applying them).
const PARALLEL_BATCH: usize = 256;
/// Batches a lane that is behind reads in one step before the leaders read again.
pub const LAGGARD_BATCHES: usize = 20;
/// The longest wait between polls when the stream is idle; a commit in this process wakes the
/// runner at once, a commit by another process is seen within this time.
const MAX_IDLE_WAIT: Duration = Duration::from_millis(500);
/// The least time from one step's start to the next while commands keep coming: under load a
/// step takes every event committed meanwhile, instead of one step (a checkpoint read and a
/// stream read per lane) per commit. It adds at most this to the time a command takes to show.
const MIN_STEP: Duration = Duration::from_millis(2);
/// How long a step that found events waits for the next commit before it looks again.
const BUSY_WAIT: Duration = Duration::from_millis(10);
/// How often the runner counts the store's events to report each projection's lag.
const RECOUNT: Duration = Duration::from_secs(5);

struct Slot {
    /// Taken out while a batch is applied on a task of its own.
    projection: Option<Box<dyn Projection>>,
    name: &'static str,
    columns: Columns,
    persisted: bool,
    /// `None` until resumed.
    checkpoint: Option<Checkpoint>,
}

/// What one step did.
#[derive(Debug, Default)]
pub struct Step {
    /// Events read.
    pub read: usize,
    /// Whether a lane stopped at its batch bound with more to read.
    pub more: bool,
    /// Projections that failed, with why; their checkpoints stayed.
    pub failures: Vec<(&'static str, ProjectionError)>,
}

/// The projection runner.
pub struct Runner {
    store: Store,
    slots: Vec<Slot>,
    batch: i64,
    status: Arc<RunnerStatus>,
    /// The read-ahead of the lane that stopped at its batch bound in the last step, reading on
    /// meanwhile: the lane's next step goes on with it instead of starting a new one.
    kept: Option<Kept>,
    /// The count of the store's head at start-up, running beside the first steps.
    counting: Option<tokio::task::JoinHandle<Result<i64, StoreError>>>,
}

impl Runner {
    /// A runner reading `batch` events at a time.
    pub fn new(store: Store, batch: i64) -> Runner {
        Runner {
            store,
            slots: Vec::new(),
            batch: batch.max(1),
            status: Arc::new(RunnerStatus::new()),
            kept: None,
            counting: None,
        }
    }

    /// Adds a projection. Within a batch, projections run concurrently; errors are reported in
    /// registration order.
    pub fn register(mut self, projection: impl Projection) -> Runner {
        let name = projection.name();
        self.slots.push(Slot {
            name,
            columns: projection.columns(),
            persisted: projection.persisted(),
            projection: Some(Box::new(projection)),
            checkpoint: None,
        });
        self.status.applied().push(Applied {
            name,
            at: Checkpoint::default(),
            lag_seconds: 0.0,
        });
        self
    }

    pub fn status(&self) -> Arc<RunnerStatus> {
        self.status.clone()
    }

    /// Counts the events the stream will return (not rows no snapshot reaches) once, beside the
    /// steps: unvacuumed, a million took 0.15 s to count, before the first read. Until it is
    /// known no step is caught up; with `wait` (a replay, a step at the end) it is waited for.
    async fn count_head(&mut self, wait: bool) -> Option<(&'static str, ProjectionError)> {
        if self.status.head_at_start.load(Ordering::Acquire) != i64::MAX {
            return None;
        }
        let counting = self.counting.take().unwrap_or_else(|| {
            let store = self.store.clone();
            tokio::spawn(async move {
                let unreachable = store.unreachable_events(10_000).await?;
                Ok(store.event_count().await? - unreachable.len() as i64)
            })
        });
        if !(wait || counting.is_finished()) {
            self.counting = Some(counting);
            return None;
        }
        let head = match counting.await {
            Ok(counted) => counted,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Unavailable(sqlx::Error::PoolClosed)),
        };
        match head {
            Ok(head) => {
                self.status.head.store(head, Ordering::Release);
                self.status.head_at_start.store(head, Ordering::Release);
                None
            }
            Err(e) => Some(("runner", e.into())),
        }
    }

    /// Resumes every projection not yet resumed, and starts counting the store's head.
    async fn resume(&mut self, wait: bool) -> Vec<(&'static str, ProjectionError)> {
        let mut failures: Vec<_> = self.count_head(wait).await.into_iter().collect();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.checkpoint.is_some() {
                continue;
            }
            let Some(projection) = slot.projection.as_mut() else {
                continue;
            };
            match projection.resume(&self.store).await {
                Ok(checkpoint) => {
                    slot.checkpoint = Some(checkpoint);
                    self.status.set_applied(index, checkpoint, None);
                }
                Err(e) => failures.push((slot.name, e)),
            }
        }
        failures
    }

    /// One step of `eucora serve`: every lane reads what is new, the leading lane first.
    pub async fn step(&mut self) -> Step {
        for slot in &mut self.slots {
            if slot.persisted {
                slot.checkpoint = None;
            }
        }
        let mut step = Step {
            failures: self.resume(false).await,
            ..Step::default()
        };
        // Lanes: projections at the same point of the stream, which is a position (ordinals can
        // disagree once a row was written by hand behind a persisted checkpoint; that row is
        // then for replay to name, not a reason to read twice). Each lane goes on from its
        // highest ordinal; the leader is the lane furthest on.
        let mut lanes: Vec<(Checkpoint, Vec<usize>)> = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(at) = slot.checkpoint else { continue };
            match lanes.iter_mut().find(|(from, _)| from.same_point(at)) {
                Some((from, members)) => {
                    if at.ordinal > from.ordinal {
                        *from = at;
                    }
                    members.push(i);
                }
                None => lanes.push((at, vec![i])),
            }
        }
        lanes.sort_by_key(|(from, _)| std::cmp::Reverse(from.ordinal));
        // A kept read-ahead no lane goes on from any more stops.
        if let Some(kept) = &self.kept {
            if !lanes.iter().any(|(from, lane)| kept.goes_on(lane, *from)) {
                self.kept = None;
            }
        }
        for (from, lane) in &lanes {
            // The leader reads what is new first; a lane behind it then reads its share.
            let plan = Plan {
                max_batches: LAGGARD_BATCHES,
                at_least: 0,
                stop_on_error: false,
                query_batches: QUERY_BATCHES,
            };
            match self.advance(lane, *from, plan).await {
                Ok((read, more, failures)) => {
                    step.read += read;
                    step.more |= more;
                    step.failures.extend(failures);
                }
                Err(RunError::Projection(e)) => step.failures.push(("runner", e)),
                Err(other) => step.failures.push((
                    "runner",
                    StoreError::Corrupt {
                        position: 0,
                        reason: other.to_string(),
                    }
                    .into(),
                )),
            }
        }
        // Caught up: every projection in one lane, past every event that the stream held at
        // start-up and will return (rows no snapshot reaches are not waited for), and that lane
        // read to the end of what is readable in this step.
        let first = self.slots.first().and_then(|s| s.checkpoint);
        let level = first.is_some_and(|first| {
            self.slots
                .iter()
                .all(|s| s.checkpoint.is_some_and(|c| c.same_point(first)))
        });
        let furthest = self
            .slots
            .iter()
            .filter_map(|s| s.checkpoint.map(|c| c.ordinal))
            .max();
        if level && !step.more && step.failures.is_empty() {
            // At the end of what is readable: this step may be the one caught up.
            step.failures.extend(self.count_head(true).await);
        }
        let head = self.status.head_at_start.load(Ordering::Acquire);
        if level
            && furthest.is_some_and(|ordinal| ordinal >= head)
            && step.failures.is_empty()
            && !step.more
            && !self.status.caught_up.swap(true, Ordering::AcqRel)
        {
            tracing::info!(events = furthest.unwrap_or(0), "projections caught up");
        }
        step
    }

    /// Runs every step until nothing is left to read now; for tests and benchmarks that drive
    /// the runner by hand. Returns the events read, or the first failure.
    pub async fn catch_up(&mut self) -> Result<usize, ProjectionError> {
        let mut total = 0;
        loop {
            let mut step = self.step().await;
            if let Some((_, e)) = step.failures.drain(..).next() {
                return Err(e);
            }
            total += step.read;
            if step.read == 0 {
                return Ok(total);
            }
        }
    }

    /// Catches up, then tails the store until `shutdown` resolves. A projection that fails is
    /// logged and retried with backoff; it never skips an event.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut wait = Duration::from_millis(10);
        let mut counted = Instant::now();
        let mut recount: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            // A step is bounded (LAGGARD_BATCHES a lane) and never cancelled half-way, so no
            // batch is left applied by some projections' tasks after the runner has gone.
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = std::future::ready(()) => {}
            }
            // The count runs beside the steps, never in their way: at ten million events it
            // takes about two seconds, which held every projection back that long. A count that
            // takes long is not repeated before twenty times its time has passed.
            if counted.elapsed() > RECOUNT && recount.as_ref().is_none_or(|r| r.is_finished()) {
                counted = Instant::now();
                let (store, status) = (self.store.clone(), self.status.clone());
                recount = Some(tokio::spawn(async move {
                    let started = Instant::now();
                    match store.event_count().await {
                        Ok(n) => status.head.store(n, Ordering::Release),
                        Err(e) => tracing::warn!(error = %e, "cannot count events"),
                    }
                    match store.unreachable_events(100).await {
                        Ok(found) => {
                            for position in found {
                                status.report_unreadable(position, UNREACHABLE.into());
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot look for unreachable events")
                        }
                    }
                    tokio::time::sleep(started.elapsed() * 19).await;
                }));
            }
            let started = Instant::now();
            let step = self.step().await;
            for (name, e) in &step.failures {
                tracing::warn!(projection = name, error = %e, "projection cannot advance; retrying");
            }
            if step.failures.is_empty() && step.more {
                // It stopped at its batch bound: step again without waiting.
                wait = BUSY_WAIT;
                continue;
            }
            if step.failures.is_empty() && step.read > 0 {
                // It read to the end: the next commit wakes it (a wake during this step is kept),
                // a commit held back behind another transaction is looked for within BUSY_WAIT.
                wait = BUSY_WAIT;
                tokio::select! {
                    _ = tokio::time::timeout(wait, self.status.wake.notified()) => {}
                    () = &mut shutdown => break,
                }
                tokio::time::sleep(MIN_STEP.saturating_sub(started.elapsed())).await;
                continue;
            }
            wait = if step.failures.is_empty() {
                (wait * 2).min(MAX_IDLE_WAIT)
            } else {
                MAX_IDLE_WAIT
            };
            tokio::select! {
                _ = tokio::time::timeout(wait, self.status.wake.notified()) => {}
                () = &mut shutdown => break,
            }
        }
        if let Some(recount) = recount {
            recount.abort();
        }
        tracing::info!("projection runner stopped");
    }

    /// `eucora replay`: every projection from position 0 through the whole stream (every event
    /// stored when it began, at least), then each one's `finish`. The first error ends it.
    /// `progress` is told how many events were read. Returns the end of the stream.
    pub async fn replay(
        mut self,
        progress: impl Fn(u64) + Send + Sync,
    ) -> Result<Checkpoint, RunError> {
        if let Some((_, e)) = self.resume(true).await.into_iter().next() {
            return Err(e.into());
        }
        // A row written by hand with a transaction id from the future is never returned: name
        // it rather than replay a history without it.
        if let Some(&position) = self.store.unreachable_events(1).await?.first() {
            return Err(RunError::Unreachable { position });
        }
        let head = self.status.head_at_start.load(Ordering::Acquire);
        let lane: Vec<usize> = (0..self.slots.len()).collect();
        let mut at = Checkpoint::default();
        let plan = Plan {
            max_batches: usize::MAX,
            at_least: head,
            stop_on_error: true,
            query_batches: QUERY_BATCHES,
        };
        let progress = &progress;
        let (_, _, failures) = self
            .advance_with(&lane, at, plan, &mut |end| {
                at = end;
                progress(end.ordinal as u64)
            })
            .await?;
        if let Some((_, e)) = failures.into_iter().next() {
            return Err(e.into());
        }
        for slot in &mut self.slots {
            if let Some(projection) = slot.projection.as_mut() {
                projection.finish(&self.store, at).await?;
            }
        }
        Ok(at)
    }

    async fn advance(
        &mut self,
        lane: &[usize],
        from: Checkpoint,
        plan: Plan,
    ) -> Result<(usize, bool, Vec<(&'static str, ProjectionError)>), RunError> {
        self.advance_with(lane, from, plan, &mut |_| {}).await
    }

    /// Reads the stream from `from` for the projections of `lane` (whose checkpoints are all
    /// `from`) and applies each batch to all of them, one task each, while the next batch is
    /// read and decoded. Returns the events read, whether it stopped at its batch bound, and the
    /// projections that failed.
    async fn advance_with(
        &mut self,
        lane: &[usize],
        from: Checkpoint,
        plan: Plan,
        after_batch: &mut (dyn FnMut(Checkpoint) + Send),
    ) -> Result<(usize, bool, Vec<(&'static str, ProjectionError)>), RunError> {
        let columns = lane
            .iter()
            .map(|&i| self.slots[i].columns)
            .max()
            .unwrap_or(Columns::Events);
        let mut live: Vec<usize> = lane.to_vec();
        let mut failures = Vec::new();
        let mut read = 0usize;
        let (mut from, mut plan) = (from, plan);
        // A lane that stopped at its bound last step goes on with the read-ahead it left, which
        // read and decoded meanwhile (a new one would start its query and stages cold: at a
        // million events behind, 50 steps each starting afresh took a tenth longer).
        let mut kept = match &self.kept {
            Some(k) if k.goes_on(lane, from) => self.kept.take(),
            _ => None,
        };
        loop {
            let resumed = kept.is_some();
            let mut batches = match kept.take() {
                Some(kept) => kept.batches,
                None => {
                    // Tailing the store, a step mostly finds a few new events: the first batch
                    // is read and applied on this task, and the read-ahead stages start only if
                    // it came back full.
                    if plan.at_least <= from.ordinal && plan.max_batches > 0 {
                        let limit = self.batch;
                        let after = (from.ordinal > 0).then_some(from.position);
                        let rows = self.store.read_global(after, limit, columns).await?;
                        let full = rows.len() as i64 == limit;
                        let batch = Arc::new(decode_rows(from.ordinal + 1, rows, true));
                        if let Some(end) = batch.last().map(Event::checkpoint) {
                            read += batch.len();
                            self.apply_batch(&mut live, &batch, end, plan, &mut failures)
                                .await?;
                            after_batch(end);
                            from = end;
                        }
                        let stop = plan.halts(&live, &failures);
                        if !full || stop || plan.max_batches == 1 {
                            return Ok((read, full && !stop, failures));
                        }
                        plan.max_batches -= 1;
                    }
                    read_ahead(self.store.clone(), from, plan, self.batch, columns, true)
                }
            };
            let mut applied = 0;
            while let Some(next) = batches.recv().await {
                let batch = Arc::new(next?);
                let Some(end) = batch.last().map(Event::checkpoint) else {
                    continue;
                };
                read += batch.len();
                applied += 1;
                self.apply_batch(&mut live, &batch, end, plan, &mut failures)
                    .await?;
                after_batch(end);
                from = end;
                if plan.halts(&live, &failures) {
                    return Ok((read, false, failures));
                }
                if applied == plan.max_batches {
                    self.kept = Some(Kept {
                        lane: live,
                        from,
                        batches,
                    });
                    return Ok((read, true, failures));
                }
            }
            // A kept read-ahead that had reached the end before this step: read afresh, for
            // what was committed since.
            if !(resumed && applied == 0) {
                return Ok((read, false, failures));
            }
        }
    }

    /// Applies one batch to the projections of `live`: a small one in turn on this task, a
    /// large one on a task per projection, at once. Projections that fail leave `live`, their
    /// checkpoints where they were.
    async fn apply_batch(
        &mut self,
        live: &mut Vec<usize>,
        batch: &Arc<Vec<Event>>,
        end: Checkpoint,
        plan: Plan,
        failures: &mut Vec<(&'static str, ProjectionError)>,
    ) -> Result<(), RunError> {
        self.status
            .rows_read
            .fetch_add(batch.len() as u64, Ordering::AcqRel);
        let unreadable: Vec<(i64, String)> = batch
            .iter()
            .filter_map(|e| {
                e.event
                    .as_ref()
                    .err()
                    .map(|why| (e.row.position, why.to_string()))
            })
            .collect();
        for (position, why) in &unreadable {
            self.status.report_unreadable(*position, why.clone());
        }
        let mut results = Vec::with_capacity(live.len());
        if batch.len() < PARALLEL_BATCH || live.len() == 1 {
            for &i in live.iter() {
                let slot = &mut self.slots[i];
                if let Some(projection) = slot.projection.as_mut() {
                    let span = batch_span(slot.name, batch);
                    let result = projection.apply(&self.store, batch).instrument(span).await;
                    results.push((i, result));
                }
            }
        } else {
            let tasks: Vec<_> = live
                .iter()
                .map(|&i| {
                    let projection = self.slots[i].projection.take();
                    let (store, batch) = (self.store.clone(), batch.clone());
                    let span = batch_span(self.slots[i].name, &batch);
                    tokio::spawn(
                        async move {
                            let mut projection = projection?;
                            let result = projection.apply(&store, &batch).await;
                            Some((projection, result))
                        }
                        .instrument(span),
                    )
                })
                .collect();
            for (&i, task) in live.iter().zip(tasks) {
                let (projection, result) = match task.await {
                    Ok(Some(done)) => done,
                    Ok(None) => continue,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => return Err(StoreError::Unavailable(sqlx::Error::PoolClosed).into()),
                };
                self.slots[i].projection = Some(projection);
                results.push((i, result));
            }
        }
        let mut still = Vec::new();
        let newest = batch
            .iter()
            .rev()
            .find_map(|e| e.event.as_ref().ok().map(|e| e.occurred_at()));
        for (i, result) in results {
            let slot = &mut self.slots[i];
            match result {
                Ok(()) => {
                    slot.checkpoint = Some(end);
                    self.status.set_applied(i, end, newest);
                    still.push(i);
                }
                Err(e) => failures.push((slot.name, e)),
            }
        }
        *live = still;
        // A replay stops at an unreadable row, once the log said the batch is as logged.
        if plan.stop_on_error && failures.is_empty() {
            if let Some((position, reason)) = unreadable.into_iter().next() {
                failures.push(("runner", ProjectionError::Unreadable { position, reason }));
            }
        }
        Ok(())
    }
}

/// The span of one projection applying one batch: a trace of its own, as the runner's work is
/// no request's.
fn batch_span(projection: &'static str, batch: &[Event]) -> tracing::Span {
    tracing::info_span!(
        "projection.batch",
        otel.name = %format_args!("projection {projection}"),
        projection,
        events = batch.len(),
        first_position = batch.first().map(|e| e.row.position),
        last_position = batch.last().map(|e| e.row.position),
    )
}
