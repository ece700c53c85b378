//! The projection runner: every registered projection is fed from one read of each batch, a
//! projection that is behind catches up without holding the others back, a replay reads every
//! event once and in order across its read-ahead's queries, a lane behind goes on across steps
//! with the read-ahead it left, and the runner stops with the shutdown it was given.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eucora::projection::intent_view::{IntentView, INTENTS};
use eucora::projection::{Event, Projection, ProjectionError, Runner, LAGGARD_BATCHES};
use eucora::store::{Checkpoint, Columns, Store};
use eucora_projections::event::Role;
use uuid::Uuid;

use crate::helpers::{Backend, TestDb};
use crate::store_contract::{cmd, commands, create};

crate::on_both_backends!(
    every_projection_is_fed_from_one_read_of_each_event,
    a_projection_that_is_behind_catches_up_without_holding_the_others_back,
    the_runner_stops_with_its_shutdown,
    a_replay_reads_every_event_once_in_order_across_its_queries,
    a_lane_behind_goes_on_across_steps_reading_each_event_once_and_what_came_meanwhile,
    a_lane_stopped_where_its_read_ahead_ended_reads_what_was_committed_after,
);

/// A projection kept in memory that counts what it applied: all a new consumer of the stream
/// needs is this type and one `register` line.
struct Counting(Arc<AtomicI64>);

#[async_trait]
impl Projection for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }

    async fn resume(&mut self, _store: &Store) -> Result<Checkpoint, ProjectionError> {
        Ok(Checkpoint::default())
    }

    async fn apply(&mut self, _store: &Store, events: &[Event]) -> Result<(), ProjectionError> {
        self.0.fetch_add(events.len() as i64, Ordering::AcqRel);
        Ok(())
    }
}

/// A projection that records the ordinal and position of every event it applied, in order.
struct Recording(Arc<std::sync::Mutex<Vec<(i64, i64)>>>);

#[async_trait]
impl Projection for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    async fn resume(&mut self, _store: &Store) -> Result<Checkpoint, ProjectionError> {
        Ok(Checkpoint::default())
    }

    async fn apply(&mut self, _store: &Store, events: &[Event]) -> Result<(), ProjectionError> {
        let mut seen = self.0.lock().unwrap();
        seen.extend(events.iter().map(|e| (e.ordinal, e.row.position)));
        Ok(())
    }
}

/// `n` low-risk intents (a creation and a policy approval each); returns the event count.
async fn intents(store: &Store, n: usize) -> i64 {
    let commands = commands(store);
    for i in 0..n {
        commands
            .execute(
                Uuid::now_v7(),
                cmd("alice", Role::Requester, create(&format!("r{i}"))),
            )
            .await
            .unwrap();
    }
    store.event_count().await.unwrap()
}

/// Waits until every stored event is readable in the global stream (on PostgreSQL another test's
/// open transaction may hold the newest back for a moment).
async fn readable(store: &Store, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (mut after, mut seen) = (0, 0);
        loop {
            let page = store
                .read_global((after > 0).then_some(after), 1000, Columns::Events)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            seen += page.len() as i64;
        }
        if seen == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{seen} of {count} events readable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn every_projection_is_fed_from_one_read_of_each_event(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let count = intents(&store, 10).await;
    readable(&store, count).await;
    // The runner of `eucora serve` on a store none of whose projections has run yet: the log,
    // the intent read model and the metrics all start from position 0, and share one read.
    let (mut runner, metrics, _log) = eucora::app::serve_runner(&store, 10);
    let status = runner.status();
    assert_eq!(runner.catch_up().await.unwrap() as i64, count);
    assert_eq!(
        status.rows_read() as i64,
        count,
        "one read per event for three projections"
    );
    assert!(status.caught_up());
    assert!(
        status.lag().iter().all(|(_, lag)| *lag == 0),
        "{:?}",
        status.lag()
    );
    assert_eq!(store.log_size().await.unwrap() as i64, count);
    assert_eq!(store.checkpoint(INTENTS).await.unwrap().ordinal, count);
    let text = metrics.render().unwrap();
    assert!(
        text.contains("eucora_events_total{event_type=\"DeploymentCreated\"} 10"),
        "{text}"
    );
}

async fn a_projection_that_is_behind_catches_up_without_holding_the_others_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let count = intents(&store, 30).await;
    readable(&store, count).await;
    // The read model is at the head; then one more intent arrives.
    let mut first = Runner::new(store.clone(), 1).register(IntentView::persisted());
    first.catch_up().await.unwrap();
    assert_eq!(store.checkpoint(INTENTS).await.unwrap().ordinal, count);
    let head = intents(&store, 1).await;
    readable(&store, head).await;

    // A new projection joins, 60 events behind.
    let counted = Arc::new(AtomicI64::new(0));
    let mut runner = Runner::new(store.clone(), 1)
        .register(IntentView::persisted())
        .register(Counting(counted.clone()));
    let step = runner.step().await;
    assert!(step.failures.is_empty(), "{:?}", step.failures);
    assert_eq!(
        store.checkpoint(INTENTS).await.unwrap().ordinal,
        head,
        "the read model took the new events in the first step"
    );
    assert_eq!(
        counted.load(Ordering::Acquire),
        LAGGARD_BATCHES as i64,
        "the new projection read its bounded share"
    );
    assert!(step.more);
    // It catches up, then shares the read model's lane: the next event is read once.
    runner.catch_up().await.unwrap();
    assert_eq!(counted.load(Ordering::Acquire), head);
    let read = runner.status().rows_read();
    let last = intents(&store, 1).await;
    readable(&store, last).await;
    assert_eq!(runner.catch_up().await.unwrap() as i64, last - head);
    assert_eq!((runner.status().rows_read() - read) as i64, last - head);
    assert_eq!(counted.load(Ordering::Acquire), last);
    assert_eq!(store.checkpoint(INTENTS).await.unwrap().ordinal, last);
}

async fn the_runner_stops_with_its_shutdown(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let count = intents(&store, 3).await;
    let (runner, metrics, _log) = eucora::app::serve_runner(&store, 10);
    let status = runner.status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(runner.run(async move {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status.caught_up() {
        assert!(Instant::now() < deadline, "never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(metrics.render().is_some());
    assert_eq!(store.log_size().await.unwrap() as i64, count);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the runner stops within five seconds of its shutdown")
        .unwrap();
}

async fn a_replay_reads_every_event_once_in_order_across_its_queries(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let count = intents(&store, 60).await;
    readable(&store, count).await;
    // One event a batch: the read-ahead's queries (50 batches each) end and start again inside
    // the stream, and its batches are decoded two at once.
    assert!(count > 2 * 50, "{count} events span more than two queries");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let end = Runner::new(store.clone(), 1)
        .register(Recording(seen.clone()))
        .replay(|_| {})
        .await
        .unwrap();
    assert_eq!(end.ordinal, count);
    let expected = numbered(&store).await;
    assert_eq!(*seen.lock().unwrap(), expected);
}

/// Every event of the stream as [`Recording`] records it: its ordinal and position, in order.
async fn numbered(store: &Store) -> Vec<(i64, i64)> {
    let count = store.event_count().await.unwrap();
    let rows = store
        .read_global(None, count + 1, Columns::Events)
        .await
        .unwrap();
    (1..).zip(rows.iter().map(|row| row.position)).collect()
}

/// A lane behind stops at its bound each step and goes on in the next with the read-ahead it left
/// running: every event is applied once, in order, none skipped, including those committed
/// between the steps, after that read-ahead had started.
async fn a_lane_behind_goes_on_across_steps_reading_each_event_once_and_what_came_meanwhile(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let count = intents(&store, 40).await;
    readable(&store, count).await;
    let mut leader = Runner::new(store.clone(), 1).register(IntentView::persisted());
    leader.catch_up().await.unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut runner = Runner::new(store.clone(), 1)
        .register(IntentView::persisted())
        .register(Recording(seen.clone()));
    let mut steps = 0;
    loop {
        let step = runner.step().await;
        assert!(step.failures.is_empty(), "{:?}", step.failures);
        steps += 1;
        if !step.more {
            break;
        }
        assert_eq!(seen.lock().unwrap().len(), steps * LAGGARD_BATCHES);
        // New events between the steps, after the lane behind started reading ahead.
        if steps <= 2 {
            let head = intents(&store, 2).await;
            readable(&store, head).await;
        }
    }
    assert!(steps >= 4, "{steps} steps");
    runner.catch_up().await.unwrap();
    let expected = numbered(&store).await;
    assert_eq!(*seen.lock().unwrap(), expected);
}

/// A lane whose read-ahead reached the end of the stream just as the lane stopped at its bound
/// reads, in its next step, what was committed after that read-ahead ended.
async fn a_lane_stopped_where_its_read_ahead_ended_reads_what_was_committed_after(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let mut count = intents(&store, 40).await;
    while count % LAGGARD_BATCHES as i64 != 0 {
        count = intents(&store, 1).await;
    }
    readable(&store, count).await;
    // One projection, one event a batch: each step stops at its bound, the last one exactly at
    // the end of the stream.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut runner = Runner::new(store.clone(), 1).register(Recording(seen.clone()));
    while (seen.lock().unwrap().len() as i64) < count {
        let step = runner.step().await;
        assert!(step.failures.is_empty(), "{:?}", step.failures);
        assert!(step.more);
    }
    // Its read-ahead finds the end, then more is committed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let head = intents(&store, 2).await;
    readable(&store, head).await;
    let step = runner.step().await;
    assert!(step.failures.is_empty(), "{:?}", step.failures);
    let expected = numbered(&store).await;
    assert_eq!(
        *seen.lock().unwrap(),
        expected,
        "read in the very next step"
    );
}
