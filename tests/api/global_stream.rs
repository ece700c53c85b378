//! The global stream on PostgreSQL under concurrent writers: no event skipped, none read twice,
//! and an order that never changes, without a global lock around appends; read whole, every
//! column exactly as stored, on SQLite a folded chunk at a time and on PostgreSQL as a binary copy.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eucora::domain::{Action, Command, DomainServices, Policy, SystemClock};
use eucora::write::Commands;
use eucora_projections::event::{Actor, Role};
use sqlx::Connection;
use uuid::Uuid;

use crate::helpers::{intent_body, Backend, Crew, TestApp, TestDb};
use crate::store_contract::read_all;

fn create_command(n: usize) -> Command {
    let body = intent_body(&format!("w{n}"), 0.2, "GLOBAL");
    let factors = serde_json::from_value(body["risk_factors"].clone()).unwrap();
    Command {
        actor: Actor {
            subject: format!("writer-{n}"),
            role: Role::Requester,
        },
        correlation_id: format!("w{n}"),
        expected_version: None,
        action: Action::Create(Box::new(eucora::domain::CreateIntent {
            app_name: format!("w{n}"),
            version: "1".into(),
            connector_type: eucora_projections::event::ConnectorType::Ansible,
            start_ring: eucora_projections::event::Ring::Lab,
            target_ring: eucora_projections::event::Ring::Global,
            change_type: eucora_projections::event::ChangeType::Normal,
            site_class: eucora_projections::event::SiteClass::Online,
            privileged_tooling: false,
            critical_infrastructure: false,
            rollback_validated: true,
            artifact_sha256: None,
            risk_factors: factors,
            justification: None,
            source_committed_at: None,
            change_ref: None,
            artifact_bytes: None,
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_writers_and_a_running_reader_see_every_event_exactly_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    let services = DomainServices::new(Arc::new(SystemClock), Policy::default());
    let commands = Arc::new(Commands::new(&store, services));
    let done = Arc::new(AtomicBool::new(false));

    // The reader tails the stream the whole time, as the projection runner does. An empty page
    // is not the end: it stops once the writers are done and it has every committed event.
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let (mut after, mut seen) = (0i64, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                let finished = done.load(Ordering::SeqCst);
                let batch = store
                    .read_global(
                        (after > 0).then_some(after),
                        50,
                        eucora::store::Columns::Stored,
                    )
                    .await
                    .unwrap();
                if batch.is_empty() {
                    if finished && seen.len() as i64 >= store.event_count().await.unwrap() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                for e in batch {
                    after = e.position;
                    seen.push(e.position);
                }
            }
            seen
        })
    };
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let commands = commands.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    commands
                        .execute(Uuid::now_v7(), create_command(w * 100 + i))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();

    assert_eq!(seen.len(), 16 * 25 * 2, "every event of every writer");
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        seen.len(),
        "none twice"
    );
    let again: Vec<i64> = read_all(&store, 1000, seen.len())
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(again, seen, "a second read gives the same order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_late_by_a_slow_transaction_is_not_skipped() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    let commands = Commands::new(
        &store,
        DomainServices::new(Arc::new(SystemClock), Policy::default()),
    );
    let before = Uuid::now_v7();
    commands.execute(before, create_command(1)).await.unwrap();
    let created = store.intent_events(before).await.unwrap()[0].event.clone();

    // A slow writer takes its position, then another commits before it does.
    let mut slow = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = slow.begin().await.unwrap();
    let slow_position: i64 = sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('deployment', $1, 1, 'DeploymentCreated', '1', $2::json, '{}') RETURNING position",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(serde_json::to_string(&created).unwrap())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let after = Uuid::now_v7();
    commands.execute(after, create_command(2)).await.unwrap();
    let later: Vec<i64> = store
        .intent_events(after)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert!(later.iter().all(|p| *p > slow_position));

    // While the slow transaction is open, nothing committed after it began is read: reading
    // past it would move the reader beyond an event that is still to come.
    let visible: Vec<i64> = store
        .read_global(None, 100, eucora::store::Columns::Stored)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert!(!visible.contains(&slow_position), "{visible:?}");
    assert!(!visible.iter().any(|p| later.contains(p)), "{visible:?}");
    tx.commit().await.unwrap();

    let seen: Vec<i64> = read_all(&store, 100, 5)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(seen.len(), 5, "{seen:?}");
    let slow_at = seen
        .iter()
        .position(|p| *p == slow_position)
        .expect("the slow event is read");
    for p in &later {
        let at = seen.iter().position(|q| q == p).unwrap();
        assert!(
            at > slow_at,
            "commit order: the slow transaction began first: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_page_through_the_global_stream_over_http() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let crew = Crew::new(&app);
    for n in 0..3 {
        app.create(
            &crew.requester,
            intent_body(&format!("h{n}"), 0.2, "GLOBAL"),
        )
        .await;
    }
    // Wait until all eleven events are readable (another test's open transaction may hold them
    // back): the policy the server started with, the crew's four principals', then the
    // intents' six.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = app.get("/api/v1/events?limit=1000", &crew.auditor).await;
        if all.body["events"].as_array().unwrap().len() == 11 {
            break;
        }
        assert!(Instant::now() < deadline, "events never became readable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = app.get("/api/v1/events?limit=5", &crew.auditor).await;
    assert_eq!(first.status, 200);
    let events = first.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(events[0]["event_type"], "PolicyActivated");
    assert_eq!(events[0]["stream"], "policy");
    assert!(events[0].get("principal_id").is_none() && events[0].get("deployment_id").is_none());
    for e in &events[1..] {
        assert_eq!(e["event_type"], "PrincipalCreated");
        assert_eq!(e["stream"], "principal");
        assert!(e["principal_id"].is_string() && e.get("deployment_id").is_none());
    }
    // Each event carries its leaf index: 0, 1, 2, … with no gap; the cursor is how many were read.
    let indices: Vec<i64> = events
        .iter()
        .map(|e| e["index"].as_i64().unwrap())
        .collect();
    assert_eq!(indices, [0, 1, 2, 3, 4]);
    let next = first.body["next_after"].as_i64().unwrap();
    assert_eq!(next, 5);
    let rest = app
        .get(
            &format!("/api/v1/events?after={next}&limit=8"),
            &crew.auditor,
        )
        .await;
    let rest_events = rest.body["events"].as_array().unwrap();
    assert_eq!(rest_events.len(), 6);
    assert_eq!(rest_events[0]["index"], 5);
    assert_eq!(rest_events[0]["event_type"], "DeploymentCreated");
    assert_eq!(rest_events[0]["stream"], "deployment");
    assert!(rest.body["next_after"].is_null());
    // The index is the log's: the leaf at that index is that event's.
    let proof = app
        .get(
            "/api/v1/proofs/inclusion?index=5&tree_size=11",
            &crew.auditor,
        )
        .await;
    assert_eq!(proof.body["position"], rest_events[0]["position"]);
    app.get("/api/v1/events?after=999999", &crew.auditor)
        .await
        .assert_problem(404);
    app.get("/api/v1/events?after=-1", &crew.auditor)
        .await
        .assert_problem(400);
    app.get("/api/v1/events", &crew.deployer)
        .await
        .assert_problem(403);
}

/// SQLite reads the stream a chunk of events a query, each column's values joined with a
/// separator: every column still reads exactly as stored, across chunks, for every column set,
/// and a chunk holding the separator itself (a row written by hand) is read row by row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reads_every_column_exactly_as_stored_across_chunks_and_odd_rows() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500)
         INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         SELECT 'deployment', 'intent-' || (i % 7), i, 'DeploymentCreated', '1',
                CASE i WHEN 1200 THEN '{\"odd\": \"' || char(30) || '\"}'
                       WHEN 1201 THEN '' ELSE '{\"n\": ' || i || '}' END,
                CASE i WHEN 2001 THEN 'm' || char(30) || char(30) ELSE '{}' END
           FROM n",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let stored: Vec<Stored> = sqlx::query_as(
        "SELECT position, event_type, event_version, payload, aggregate_type, aggregate_id,
                sequence, metadata FROM events ORDER BY position",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(stored.len(), 2500);
    reads_every_column_as_stored(&store, &stored).await;
}

/// Every column of each event, as stored.
type Stored = (i64, String, String, String, String, String, i64, String);

/// Reads the whole stream a page at a time, with each column set and two page sizes, and checks
/// every event's columns against `stored`.
async fn reads_every_column_as_stored(store: &eucora::store::Store, stored: &[Stored]) {
    use eucora::store::Columns;
    for columns in [Columns::Events, Columns::Streams, Columns::Stored] {
        for page in [700, 2600] {
            let mut read: Vec<Stored> = vec![];
            let mut after = None;
            loop {
                let rows = store.read_global(after, page, columns).await.unwrap();
                let Some(last) = rows.last() else { break };
                after = Some(last.position);
                read.extend(rows.into_iter().map(|r| {
                    let (kind, id, sequence) =
                        r.stream.map_or((String::new(), String::new(), 0), |s| {
                            (s.aggregate_type, s.aggregate_id, s.sequence)
                        });
                    let metadata = r.stored.map_or(String::new(), |s| s.metadata);
                    let row = (r.position, r.event_type, r.event_version, r.payload);
                    (row.0, row.1, row.2, row.3, kind, id, sequence, metadata)
                }));
            }
            let expected: Vec<Stored> = stored
                .iter()
                .map(|s| {
                    let mut s = s.clone();
                    if columns < Columns::Streams {
                        (s.4, s.5, s.6) = (String::new(), String::new(), 0);
                    }
                    if columns < Columns::Stored {
                        s.7 = String::new();
                    }
                    s
                })
                .collect();
            assert!(
                read == expected,
                "{columns:?}, pages of {page}: read differs"
            );
        }
    }
}

/// PostgreSQL hands the stream over as a binary copy, read here: every column still reads
/// exactly as stored (escapes, text beyond ASCII, a payload far larger than one network read),
/// across pages, for every column set; and a copy its reader leaves unfinished closes its
/// connection rather than hand it back out of step with the server, so every later read on a
/// pool of one connection still reads the whole stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_copies_every_column_as_stored_and_an_unfinished_copy_spoils_no_connection() {
    use eucora::store::Columns;
    use futures_util::StreamExt;
    let db = TestDb::new(Backend::Postgres).await;
    db.store().await; // the schema
    db.execute(
        r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                               payload, metadata)
           SELECT 'deployment', 'intent-' || (i % 7), i, 'DeploymentCreated', '1',
                  (CASE i WHEN 1200 THEN '{"odd": "tab \t, quote \", é, 🚀"}'
                          WHEN 1201 THEN json_build_object('big', repeat('é', 200000))::text
                          ELSE '{"n": ' || i || '}' END)::json,
                  (CASE i WHEN 2001 THEN '{"m": "\u001e"}' ELSE '{}' END)::json
             FROM generate_series(1, 2500) i"#,
    )
    .await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let stored: Vec<Stored> = sqlx::query_as(
        "SELECT position, event_type, event_version, payload::text, aggregate_type, aggregate_id,
                sequence, metadata::text FROM events ORDER BY xact_id, position",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(stored.len(), 2500);
    assert!(stored[1199].3.contains('🚀') && stored[1200].3.len() > 400_000);
    let store = eucora::store::Store::connect(&db.url, 1).await.unwrap();
    reads_every_column_as_stored(&store, &stored).await;
    for _ in 0..3 {
        let mut rows = store.global_rows(None, 2500, Columns::Stored);
        assert_eq!(rows.next().await.unwrap().unwrap().position, stored[0].0);
        drop(rows);
        let all = store
            .read_global(None, 3000, Columns::Stored)
            .await
            .unwrap();
        let positions: Vec<i64> = all.iter().map(|r| r.position).collect();
        let expected: Vec<i64> = stored.iter().map(|s| s.0).collect();
        assert!(positions == expected, "a read after an unfinished copy");
    }
}
