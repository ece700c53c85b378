//! `eucora replay`: the rebuilt metrics equal the live ones byte for byte, and tampering with the
//! stored stream is named at its first bad position.

use std::time::{Duration, Instant};

use sha2::Digest;
use sqlx::Connection;

use eucora::projection::intent_view::{IntentView, INTENTS};
use eucora::projection::log::MerkleLog;
use eucora::projection::Runner;

use crate::helpers::{eucora, intent_body, Backend, Crew, TestApp, TestDb};

crate::on_both_backends!(
    replay_rebuilds_the_metrics_the_server_serves_byte_for_byte,
    an_edited_event_is_named_by_replay,
    a_deleted_event_is_named_by_replay,
    reordered_events_are_named_by_replay,
    an_inserted_event_is_named_by_replay,
    the_log_takes_what_it_reads_once_and_replay_verifies_it,
    a_log_resumed_tiles_behind_holds_the_tree_it_logged,
    replay_rebuilds_the_intent_list_the_runner_builds,
    tampering_past_the_first_batch_is_named_by_replay,
);

/// Some traffic through a real server, then the server stops; returns the global order of the
/// intents' events (the crew's tokens come first, as principals' events).
async fn seeded(backend: Backend) -> (TestDb, Vec<i64>) {
    let db = TestDb::new(backend).await;
    {
        let app = TestApp::spawn_on_shared(&db).await;
        let crew = Crew::new(&app);
        for n in 0..3 {
            let id = app
                .create(
                    &crew.requester,
                    intent_body(&format!("app{n}"), 0.8, "GLOBAL"),
                )
                .await
                .id();
            app.approve(&crew.approver, &id).await;
            app.deploy(&crew.deployer, &id, "LAB", 10, 9 + n as u64 % 2)
                .await;
        }
    }
    let (ok, out, err) = replay(&db, &[]);
    assert_eq!(db.intent_event_count().await, 9);
    let all = db.event_count().await;
    assert!(
        ok && out.contains(&format!("replayed {all} events")),
        "{out}{err}"
    );
    let store = db.store().await;
    let order = store
        .read_global(None, 100, eucora::store::Columns::Stored)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.stream().unwrap().aggregate_type == "deployment")
        .map(|e| e.position)
        .collect();
    (db, order)
}

fn replay(db: &TestDb, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["replay", "--database-url", &db.url];
    args.extend_from_slice(extra);
    eucora(&args)
}

/// Runs SQL directly against the database with the append-only triggers out of the way.
async fn tamper(db: &TestDb, backend: Backend, statements: &[String]) {
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            for s in [
                "DROP TRIGGER IF EXISTS events_refuse_update",
                "DROP TRIGGER IF EXISTS events_refuse_delete",
            ] {
                sqlx::query(s).execute(&mut conn).await.unwrap();
            }
            for s in statements {
                sqlx::query(s).execute(&mut conn).await.unwrap();
            }
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query("ALTER TABLE events DISABLE TRIGGER USER")
                .execute(&mut conn)
                .await
                .unwrap();
            for s in statements {
                sqlx::query(s).execute(&mut conn).await.unwrap();
            }
        }
    }
}

fn assert_names(db: &TestDb, position: i64, kind: &str) {
    let (ok, out, err) = replay(db, &[]);
    assert!(!ok, "replay passed a tampered stream: {out}");
    assert!(
        err.contains(&format!("integrity check failed at position {position}:"))
            && err.contains(kind),
        "expected position {position} ({kind}): {err}"
    );
    // One kind of number: a position, never an ordinal beside it.
    assert!(!err.contains('#'), "{err}");
}

async fn replay_rebuilds_the_metrics_the_server_serves_byte_for_byte(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    for n in 0..4 {
        let id = app
            .create(
                &crew.requester,
                intent_body(&format!("app{n}"), 0.8, "GLOBAL"),
            )
            .await
            .id();
        app.approve(&crew.approver, &id).await;
        app.deploy(&crew.deployer, &id, "LAB", 10, 10).await;
        if n == 3 {
            app.rollback(&crew.deployer, &id, "crash").await;
            // A refused command is an event too (as the policy the server started with is):
            // replay rebuilds what they count.
            assert_eq!(app.approve(&crew.deployer, &id).await.status, 403);
        }
    }
    let expected = "eucora_events_total{event_type=\"CommandRefused\"} 1";
    let live = crate::metrics::metrics_with(&app, "/api/v1/metrics", expected).await;
    let out_file = app.db.dir().join("replayed.prom");
    let (ok, out, err) = replay(&app.db, &["--metrics-out", out_file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let replayed = std::fs::read_to_string(&out_file).unwrap();
    let domain = crate::metrics::domain_part(&live);
    assert!(
        domain.contains("eucora_events_total{event_type=\"PolicyActivated\"} 1"),
        "{domain}"
    );
    assert!(
        replayed == domain,
        "replayed metrics differ from the live endpoint's domain lines"
    );
    let digest = hex::encode(sha2::Sha256::digest(domain.as_bytes()));
    assert!(
        out.contains(&format!("domain metrics sha256:{digest}")),
        "{out}"
    );
    assert_eq!(app.intent_event_count().await, 13);
    let all = app.event_count().await;
    assert!(out.contains(&format!("replayed {all} events")), "{out}");
}

async fn an_edited_event_is_named_by_replay(backend: Backend) {
    let (db, order) = seeded(backend).await;
    let p = order[3];
    let sql = match backend {
        Backend::Sqlite => format!("UPDATE events SET payload = replace(payload, '\"app1\"', '\"evil\"') WHERE position = {p}"),
        Backend::Postgres => format!("UPDATE events SET payload = replace(payload::text, '\"app1\"', '\"evil\"')::json WHERE position = {p}"),
    };
    // Each app wrote Created, Approved, Deployed: order[3] is app1's creation.
    let store = db.store().await;
    let target = store
        .read_global(None, 100, eucora::store::Columns::Stored)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.position == p)
        .unwrap();
    assert_eq!(target.event_type, "DeploymentCreated");
    tamper(&db, backend, &[sql]).await;
    assert_names(&db, p, "edited");
    // Edited into something that is no event at all: still an edit, not an unreadable payload.
    let (db, order) = seeded(backend).await;
    let p = order[4];
    let sql = match backend {
        Backend::Sqlite => {
            format!("UPDATE events SET payload = '{{\"not\":\"an event\"}}' WHERE position = {p}")
        }
        Backend::Postgres => format!(
            "UPDATE events SET payload = '{{\"not\":\"an event\"}}'::json WHERE position = {p}"
        ),
    };
    tamper(&db, backend, &[sql]).await;
    assert_names(&db, p, "edited");
}

async fn a_deleted_event_is_named_by_replay(backend: Backend) {
    let (db, order) = seeded(backend).await;
    tamper(
        &db,
        backend,
        &[format!("DELETE FROM events WHERE position = {}", order[2])],
    )
    .await;
    assert_names(&db, order[2], "missing");
    // The last event too: nothing follows it, the log still remembers it.
    let (db, order) = seeded(backend).await;
    tamper(
        &db,
        backend,
        &[format!("DELETE FROM events WHERE position = {}", order[8])],
    )
    .await;
    assert_names(&db, order[8], "missing");
}

async fn reordered_events_are_named_by_replay(backend: Backend) {
    let (db, order) = seeded(backend).await;
    let (a, b) = (order[3], order[6]);
    let sql = match backend {
        Backend::Sqlite => format!(
            "UPDATE events SET payload = CASE position WHEN {a} THEN (SELECT payload FROM events WHERE position = {b})
                                                       ELSE (SELECT payload FROM events WHERE position = {a}) END
              WHERE position IN ({a}, {b})"
        ),
        Backend::Postgres => format!(
            "UPDATE events SET payload = CASE position WHEN {a} THEN (SELECT payload FROM events WHERE position = {b})
                                                       ELSE (SELECT payload FROM events WHERE position = {a}) END
              WHERE position IN ({a}, {b})"
        ),
    };
    tamper(&db, backend, &[sql]).await;
    assert_names(&db, a, "edited");
}

async fn an_inserted_event_is_named_by_replay(backend: Backend) {
    let (db, order) = seeded(backend).await;
    // A forged copy of the first event, placed before every logged one.
    let sql = match backend {
        Backend::Sqlite => format!(
            "INSERT INTO events (position, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             SELECT 0, aggregate_type, 'forged', sequence, event_type, event_version, payload, metadata
               FROM events WHERE position = {}",
            order[0]
        ),
        Backend::Postgres => format!(
            "INSERT INTO events (position, xact_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             OVERRIDING SYSTEM VALUE
             SELECT 0, '3'::xid8, aggregate_type, 'forged', sequence, event_type, event_version, payload, metadata
               FROM events WHERE position = {}",
            order[0]
        ),
    };
    tamper(&db, backend, &[sql]).await;
    assert_names(&db, 0, "inserted");
}

async fn the_log_takes_what_it_reads_once_and_replay_verifies_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    {
        let app = TestApp::spawn_on_shared(&db).await;
        let crew = Crew::new(&app);
        for n in 0..2 {
            app.create(
                &crew.requester,
                intent_body(&format!("s{n}"), 0.2, "GLOBAL"),
            )
            .await;
        }
    }
    let store = db.store().await;
    let mut logger =
        Runner::new(store.clone(), 1000).register(MerkleLog::extending(Default::default()));
    let mut logged = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    // Four of the intents', the crew's four principals' and the policy the server started with.
    let all = store.event_count().await.unwrap() as u64;
    assert_eq!(all, 9);
    while store.log_size().await.unwrap() < all {
        logged += logger.catch_up().await.unwrap();
        assert!(Instant::now() < deadline, "never logged all {all} events");
    }
    assert!(logged as u64 <= all, "an event was logged twice");
    assert_eq!(logger.catch_up().await.unwrap(), 0, "nothing new to log");
    let report = eucora::replay::replay(&store, 10, |_| {}).await.unwrap();
    assert_eq!(
        (report.events, report.verified, report.logged),
        (all, all, 0)
    );
    // The intent read model was rebuilt from position 0.
    let listed = store
        .list_intents(&eucora::read::ListFilter::default(), 0, 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(store.checkpoint(INTENTS).await.unwrap().ordinal, all as i64);
}

/// A server starting on a log many tiles long takes its tree from the stored subtree heads and
/// the last tile, and one starting on a few tiles follows them leaf by leaf: both hold the tree
/// the log was built into, event by event.
async fn a_log_resumed_tiles_behind_holds_the_tree_it_logged(backend: Backend) {
    use eucora::projection::log::LogView;
    use eucora::store::TILE;
    use std::sync::Arc;
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let commands = Arc::new(crate::store_contract::commands(&store));
    let log = |view: &LogView| {
        Runner::new(store.clone(), 1000).register(MerkleLog::extending(view.clone()))
    };
    // PostgreSQL's global stream shows an event once every transaction older than its own has
    // ended on the whole server, other tests' databases included, so a step can find nothing while
    // events are still to come: a log has caught up when it holds every stored event.
    let logged_all = |mut runner: Runner, view: LogView| {
        let store = store.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                runner.catch_up().await.unwrap();
                let stored = store.event_count().await.unwrap() as u64;
                if view.size() >= stored {
                    return runner;
                }
                assert!(
                    Instant::now() < deadline,
                    "logged {} of {stored}",
                    view.size()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let built = LogView::default();
    let mut logger = log(&built);
    // A log started on what the logger has logged holds the logger's tree.
    let started_on = |logger_tree: eucora::projection::log::LogTree| {
        let (log, logged_all) = (&log, &logged_all);
        async move {
            let view = LogView::default();
            logged_all(log(&view), view.clone()).await;
            let tree = view.tree();
            assert_eq!(tree.size(), logger_tree.size());
            assert_eq!(tree.root(), logger_tree.root(), "at size {}", tree.size());
            tree.size()
        }
    };
    let mut few = None;
    // Up to six full tiles and part of a seventh.
    for round in 0.. {
        if store.event_count().await.unwrap() as u64 > 6 * TILE + TILE / 2 {
            break;
        }
        let creates: Vec<_> = (0..64)
            .map(|i| {
                let commands = commands.clone();
                tokio::spawn(async move {
                    let create = crate::store_contract::create(&format!("app{round}-{i}"));
                    let alice = eucora_projections::event::Role::Requester;
                    let command = crate::store_contract::cmd("alice", alice, create);
                    commands
                        .execute(uuid::Uuid::now_v7(), command)
                        .await
                        .unwrap();
                })
            })
            .collect();
        for create in creates {
            create.await.unwrap();
        }
        logger = logged_all(logger, built.clone()).await;
        // A few tiles in: followed leaf by leaf.
        if few.is_none() && built.size() > 2 * TILE {
            few = Some(started_on(built.tree()).await);
        }
    }
    let size = store.event_count().await.unwrap() as u64;
    assert_eq!(store.log_size().await.unwrap(), size);
    assert!(few.is_some_and(|few| few < 4 * TILE), "{few:?}");
    // Many tiles in: every tile but the last read as its stored head.
    assert_eq!(started_on(built.tree()).await, size);
}

async fn replay_rebuilds_the_intent_list_the_runner_builds(backend: Backend) {
    use eucora::store::ViewRepair;
    let db = TestDb::new(backend).await;
    {
        let app = TestApp::spawn_on_shared(&db).await;
        let crew = Crew::new(&app);
        for n in 0..6 {
            let risk = if n % 2 == 0 { 0.8 } else { 0.2 };
            let id = app
                .create(
                    &crew.requester,
                    intent_body(&format!("r{n}"), risk, "GLOBAL"),
                )
                .await
                .id();
            match n {
                0 => {}
                4 => {
                    app.reject(&crew.approver, &id, "no").await;
                }
                _ => {
                    if risk > 0.5 {
                        app.approve(&crew.approver, &id).await;
                    }
                    app.deploy(&crew.deployer, &id, "LAB", 10, 10).await;
                    app.promote(&crew.deployer, &id).await;
                    if n == 3 {
                        app.rollback(&crew.deployer, &id, "crash").await;
                    }
                }
            }
        }
    }
    let store = db.store().await;
    let count = db.event_count().await;
    // What the runner builds from position 0, event by event.
    store.reset_intent_view(INTENTS).await.unwrap();
    let mut runner = Runner::new(store.clone(), 10).register(IntentView::persisted());
    while store.checkpoint(INTENTS).await.unwrap().ordinal < count {
        runner.catch_up().await.unwrap();
    }
    let list = || async {
        store
            .list_intents(&eucora::read::ListFilter::default(), 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|row| (row.seq, row.state))
            .collect::<Vec<_>>()
    };
    let built = list().await;
    assert_eq!(built.len(), 6);

    let report = eucora::replay::replay(&store, 10, |_| {}).await.unwrap();
    assert_eq!(report.events as i64, count);
    assert_eq!(
        list().await,
        built,
        "the replay's read model is the runner's"
    );
    assert_eq!(
        report.view,
        ViewRepair::default(),
        "the runner's read model was already right: nothing rewritten"
    );

    // A read model that drifted from the stream: a row with another sort key, a row with another
    // intent's state, a row gone, a row no intent has, and a row whose filter columns lie. Replay puts back exactly what it built.
    let id = |n: usize| built[n].1.id.to_string();
    tamper(
        &db,
        backend,
        &[
            format!("UPDATE intent_view SET seq = seq + 1000 WHERE id = '{}'", id(1)),
            format!(
                "UPDATE intent_view SET state = (SELECT state FROM intent_view WHERE id = '{}') \
                 WHERE id = '{}'",
                id(0),
                id(2)
            ),
            format!(
                "INSERT INTO intent_view (id, seq, status, current_ring, app_name, stream_version, state) \
                 SELECT 'no-such-intent', 9999, status, current_ring, app_name, stream_version, state \
                   FROM intent_view WHERE id = '{}'",
                id(3)
            ),
            format!("DELETE FROM intent_view WHERE id = '{}'", id(3)),
            // Only the filter columns: the state still says what the stream says.
            format!(
                "UPDATE intent_view SET status = 'completed', app_name = 'Forged' WHERE id = '{}'",
                id(5)
            ),
        ],
    )
    .await;
    let report = eucora::replay::replay(&store, 10, |_| {}).await.unwrap();
    assert_eq!(
        report.view,
        ViewRepair {
            rewritten: 4,
            removed: 1
        }
    );
    assert_eq!(list().await, built, "the drifted read model is rebuilt");
    let checkpoint = store.checkpoint(INTENTS).await.unwrap();
    assert_eq!(checkpoint.ordinal, count);
    assert_eq!(
        checkpoint.position,
        store
            .read_global(None, 1000, eucora::store::Columns::Stored)
            .await
            .unwrap()
            .last()
            .unwrap()
            .position
    );
}

/// Writes intents straight through the aggregate into the store, no HTTP, until there are at
/// least `at_least` events: enough for several of replay's 5,000-event batches.
async fn persisted_intents(db: &TestDb, at_least: usize) {
    use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
    use cqrs_es::{Aggregate, DomainEvent};
    use eucora::domain::intent::IntentEvent;
    use eucora::domain::{DeploymentIntent, DomainServices, FakeClock, Policy};
    use eucora_projections::event::Role;

    use crate::store_contract::{cmd, create};

    let clock = std::sync::Arc::new(FakeClock::new(chrono::Utc::now()));
    let services = DomainServices::new(clock, Policy::default());
    let repo = db.store().await.event_repo();
    let mut written = Vec::new();
    for n in 1u128.. {
        let id = uuid::Uuid::from_u128(n);
        let command = cmd("req", Role::Requester, create(&format!("bulk-{}", n % 50)));
        let events = DeploymentIntent::default()
            .decide(id, command, &services)
            .expect("a valid intent");
        for (i, e) in events.into_iter().enumerate() {
            let event = IntentEvent(e);
            written.push(SerializedEvent::new(
                id.to_string(),
                i + 1,
                DeploymentIntent::TYPE.to_string(),
                event.event_type(),
                event.event_version(),
                serde_json::to_value(&event).unwrap(),
                serde_json::json!({}),
            ));
        }
        if written.len() >= at_least {
            break;
        }
    }
    for part in written.chunks(1000) {
        repo.persist::<DeploymentIntent>(part, None).await.unwrap();
    }
}

/// Replay checks every batch against the log's tiles: a tampered event in a later batch, or a
/// deleted one in the first, is still named exactly.
async fn tampering_past_the_first_batch_is_named_by_replay(backend: Backend) {
    let db = TestDb::new(backend).await;
    persisted_intents(&db, 12_000).await;
    let (ok, out, err) = replay(&db, &[]);
    assert!(ok && out.contains("0 verified"), "{out}{err}");
    let store = db.store().await;
    let mut order = Vec::new();
    while order.len() < 12_000 {
        let after = order.last().map_or(0, |(p, _)| *p);
        let page = store
            .read_global(
                (after > 0).then_some(after),
                5000,
                eucora::store::Columns::Stored,
            )
            .await
            .unwrap();
        assert!(!page.is_empty());
        order.extend(page.iter().map(|e| (e.position, e.event_type.clone())));
    }
    let created_from = |i: usize| {
        order[i..]
            .iter()
            .find(|(_, t)| t == "DeploymentCreated")
            .map(|(p, _)| *p)
            .unwrap()
    };
    let payload = |p: i64, from: &str, to: &str| match backend {
        Backend::Sqlite => format!(
            "UPDATE events SET payload = replace(payload, '{from}', '{to}') WHERE position = {p}"
        ),
        Backend::Postgres => format!(
            "UPDATE events SET payload = replace(payload::text, '{from}', '{to}')::json \
             WHERE position = {p}"
        ),
    };
    // A creation from the 7,777th event on, in the second batch, edited.
    let edited = created_from(7776);
    tamper(
        &db,
        backend,
        &[payload(edited, "\"version\":\"1\"", "\"version\":\"6\"")],
    )
    .await;
    assert_names(&db, edited, "edited");
    // Put back, it verifies again: the log is checked past it.
    tamper(
        &db,
        backend,
        &[payload(edited, "\"version\":\"6\"", "\"version\":\"1\"")],
    )
    .await;
    let (ok, out, err) = replay(&db, &[]);
    assert!(
        ok && out.contains(&format!("{} verified", order.len())),
        "{out}{err}"
    );
    // The 123rd event, in the first batch, deleted.
    let deleted = order[122].0;
    tamper(
        &db,
        backend,
        &[format!("DELETE FROM events WHERE position = {deleted}")],
    )
    .await;
    assert_names(&db, deleted, "missing");
}
