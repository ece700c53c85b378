//! The store contract: what both backends must do the same way.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use eucora::domain::{
    Action, Command, CreateIntent, DeploymentIntent, DomainServices, FakeClock, Policy,
    RiskFactors, RolloutInput,
};
use eucora::read::{IntentReader, ReadModel};
use eucora::store::Reservation;
use eucora::write::{CommandError, Commands};
use eucora_projections::event::*;
use serde_json::json;
use sqlx::Connection;
use uuid::Uuid;

use crate::helpers::{Backend, TestDb};

crate::on_both_backends!(
    appended_events_come_back_in_order_with_rising_global_positions,
    a_second_write_of_the_same_stream_version_is_a_conflict_not_a_duplicate,
    concurrent_appends_commit_together_and_a_lost_race_fails_alone,
    the_store_refuses_to_update_or_delete_events,
    migrations_can_run_again,
    idempotency_keys_are_reserved_replayed_and_released,
    tokens_are_looked_up_by_hash_only,
    concurrent_reports_on_one_intent_lose_and_duplicate_nothing,
    two_command_runners_on_one_store_never_act_on_a_stale_stream,
    the_global_stream_returns_every_event_once_in_a_stable_order,
    the_intent_read_model_resumes_from_its_checkpoint_and_applies_each_event_once,
);

pub(crate) fn commands(store: &eucora::store::Store) -> Commands {
    let clock = Arc::new(FakeClock::new(
        Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap(),
    ));
    Commands::new(store, DomainServices::new(clock, Policy::default()))
}

pub(crate) fn cmd(subject: &str, role: Role, action: Action) -> Command {
    Command {
        actor: Actor {
            subject: subject.into(),
            role,
        },
        correlation_id: "contract".into(),
        expected_version: None,
        action,
    }
}

pub(crate) fn create(app: &str) -> Action {
    let v = 0.2;
    Action::Create(Box::new(CreateIntent {
        app_name: app.into(),
        version: "1".into(),
        connector_type: ConnectorType::Jamf,
        start_ring: Ring::Lab,
        target_ring: Ring::Pilot,
        change_type: ChangeType::Normal,
        site_class: SiteClass::Online,
        privileged_tooling: false,
        critical_infrastructure: false,
        rollback_validated: true,
        artifact_sha256: None,
        risk_factors: RiskFactors {
            privilege_impact: v,
            supply_chain_trust: v,
            exploitability: v,
            data_access: v,
            sbom_vulnerability: v,
            operational_complexity: v,
            history: v,
        },
        justification: None,
        source_committed_at: None,
        change_ref: None,
        artifact_bytes: None,
    }))
}

fn report(succeeded: u64) -> Action {
    Action::Deploy(RolloutInput {
        ring: Ring::Lab,
        target_devices: 100,
        succeeded,
        failed: 100 - succeeded,
        incidents: 0,
    })
}

async fn appended_events_come_back_in_order_with_rising_global_positions(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let commands = commands(&store);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    commands
        .execute(a, cmd("alice", Role::Requester, create("a")))
        .await
        .unwrap();
    commands
        .execute(b, cmd("alice", Role::Requester, create("b")))
        .await
        .unwrap();
    commands
        .execute(a, cmd("ops", Role::Deployer, report(99)))
        .await
        .unwrap();

    let stream = store.intent_events(a).await.unwrap();
    let types: Vec<&str> = stream.iter().map(|e| e.event.type_name()).collect();
    assert_eq!(
        types,
        [
            "DeploymentCreated",
            "DeploymentApproved",
            "DeploymentDeployed"
        ]
    );
    assert_eq!(
        stream.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(stream.windows(2).all(|w| w[0].position < w[1].position));
    let other = store.intent_events(b).await.unwrap();
    assert!(other[0].position > stream[1].position && other[1].position < stream[2].position);
    assert_eq!(store.event_count().await.unwrap(), 5);

    let reads = ReadModel::new(store.clone());
    let state = reads.get(a).await.unwrap().unwrap();
    assert_eq!((state.status, state.stream_version), (Status::Deployed, 3));
    assert!(reads.get(Uuid::now_v7()).await.unwrap().is_none());
}

async fn a_second_write_of_the_same_stream_version_is_a_conflict_not_a_duplicate(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let repo = store.event_repo();
    let event = |n: u64| {
        SerializedEvent::new(
            "x".into(),
            1,
            "deployment".into(),
            "Probe".into(),
            "1".into(),
            json!({ "n": n }),
            json!({}),
        )
    };
    repo.persist::<DeploymentIntent>(&[event(1)], None)
        .await
        .unwrap();
    let second = repo.persist::<DeploymentIntent>(&[event(2)], None).await;
    assert!(
        matches!(second, Err(PersistenceError::OptimisticLockError)),
        "{second:?}"
    );
    assert_eq!(store.event_count().await.unwrap(), 1);
}

/// Group commit: concurrent appends share transactions, yet each keeps its own outcome.
async fn concurrent_appends_commit_together_and_a_lost_race_fails_alone(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let repo = Arc::new(store.event_repo());
    let event = |id: &str, sequence: usize, n: u64| {
        SerializedEvent::new(
            id.into(),
            sequence,
            "deployment".into(),
            "Probe".into(),
            "1".into(),
            json!({ "n": n }),
            json!({}),
        )
    };
    // 64 new streams of two events each, and two appends racing for version 1 of one stream.
    let mut appends: Vec<(String, Vec<SerializedEvent>)> = (0..64)
        .map(|i| {
            let id = format!("s{i}");
            let events = vec![event(&id, 1, i), event(&id, 2, i)];
            (id, events)
        })
        .collect();
    appends.insert(20, ("race".into(), vec![event("race", 1, 1)]));
    appends.insert(40, ("race".into(), vec![event("race", 1, 2)]));
    let tasks: Vec<_> = appends
        .into_iter()
        .map(|(id, events)| {
            let repo = repo.clone();
            tokio::spawn(async move { (id, repo.persist::<DeploymentIntent>(&events, None).await) })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let committed = |id: &str| {
        outcomes
            .iter()
            .filter(|(i, o)| i == id && o.is_ok())
            .count()
    };
    assert!(
        (0..64).all(|i| committed(&format!("s{i}")) == 1),
        "{outcomes:?}"
    );
    assert_eq!(committed("race"), 1, "exactly one racer commits");
    let lost: Vec<_> = outcomes.iter().filter(|(_, o)| o.is_err()).collect();
    assert!(
        matches!(lost[..], [(_, Err(PersistenceError::OptimisticLockError))]),
        "the other racer alone fails, as a lost race: {lost:?}"
    );
    assert_eq!(store.event_count().await.unwrap(), 64 * 2 + 1);
    if backend == Backend::Postgres {
        // The appends shared transactions: one transaction each would be 65.
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let transactions: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT xact_id) FROM events")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(
            transactions <= 32,
            "{transactions} transactions for 65 appends"
        );
    }

    // A command answers with the position its last event was stored at.
    let commands = Arc::new(commands(&store));
    let creates: Vec<_> = (0..16)
        .map(|i| {
            let commands = commands.clone();
            tokio::spawn(async move {
                let state = commands
                    .execute(
                        Uuid::now_v7(),
                        cmd("alice", Role::Requester, create(&format!("app{i}"))),
                    )
                    .await
                    .unwrap();
                let index = commands.index_of(&state).await;
                (state, index)
            })
        })
        .collect();
    for t in creates {
        let (state, index) = t.await.unwrap();
        let stored = store.intent_events(state.id).await.unwrap();
        assert_eq!(index, stored.last().map(|e| e.position));
    }
}

async fn the_store_refuses_to_update_or_delete_events(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    commands(&store)
        .execute(Uuid::now_v7(), cmd("alice", Role::Requester, create("a")))
        .await
        .unwrap();
    // Log both events, so the log can be attacked too.
    let mut logger = eucora::projection::Runner::new(store.clone(), 1000).register(
        eucora::projection::log::MerkleLog::extending(Default::default()),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.log_size().await.unwrap() < 2 {
        logger.catch_up().await.unwrap();
        assert!(std::time::Instant::now() < deadline, "never logged");
    }
    let columns = "position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
                   payload, metadata";
    let first = "(SELECT MIN(position) FROM events WHERE aggregate_type = 'deployment')";
    let mut statements = vec![
        "UPDATE events SET event_type = 'Forged'".to_string(),
        "DELETE FROM events".to_string(),
        "UPDATE log_tiles SET leaves = substr(leaves, 33)".to_string(),
        "DELETE FROM log_tiles".to_string(),
        // A tile begun before the one before it is full.
        "INSERT INTO log_tiles SELECT 3, leaves, positions, NULL FROM log_tiles WHERE tile = 0"
            .to_string(),
    ];
    // A tile grown by a leaf for an event never stored (replay would call it deleted), by a hash
    // without a position, or given a subtree head before it is full.
    let tile = store.log_tiles(0, 0).await.unwrap().remove(0);
    let leaves = hex::encode(tile.leaves.concat());
    let positions: Vec<u8> = tile
        .positions
        .iter()
        .flat_map(|p| p.to_be_bytes())
        .collect();
    let positions = hex::encode(positions);
    let blob = |hex: &str| match backend {
        Backend::Sqlite => format!("x'{hex}'"),
        Backend::Postgres => format!("decode('{hex}', 'hex')"),
    };
    let more_leaves = blob(&format!("{leaves}{}", "00".repeat(32)));
    let more_positions = blob(&format!("{positions}{:016x}", 1_000_000));
    statements.extend([
        format!(
            "UPDATE log_tiles SET leaves = {more_leaves}, positions = {more_positions} \
             WHERE tile = 0"
        ),
        format!("UPDATE log_tiles SET leaves = {more_leaves} WHERE tile = 0"),
        format!(
            "UPDATE log_tiles SET subtree = {} WHERE tile = 0",
            blob(&"00".repeat(32))
        ),
    ]);
    match backend {
        // A replace deletes the row it meets without firing a DELETE trigger.
        Backend::Sqlite => statements.extend([
            format!(
                "INSERT OR REPLACE INTO events ({columns}) SELECT position, aggregate_type, \
                 aggregate_id, sequence, 'Forged', event_version, payload, metadata \
                 FROM events WHERE position = {first}"
            ),
            format!(
                "REPLACE INTO events ({columns}) SELECT position + 1000, aggregate_type, \
                 aggregate_id, sequence, event_type, event_version, payload, metadata \
                 FROM events WHERE position = {first}"
            ),
            "INSERT OR REPLACE INTO log_tiles SELECT tile, substr(leaves, 33), \
             substr(positions, 9), subtree FROM log_tiles WHERE tile = 0"
                .to_string(),
        ]),
        // PostgreSQL's upsert updates the row it meets, and the UPDATE trigger fires.
        Backend::Postgres => statements.extend([
            format!(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                 event_version, payload, metadata) SELECT aggregate_type, aggregate_id, \
                 sequence, event_type, event_version, payload, metadata FROM events \
                 WHERE position = {first} \
                 ON CONFLICT (aggregate_type, aggregate_id, sequence) \
                 DO UPDATE SET event_type = 'Forged'"
            ),
            "INSERT INTO log_tiles SELECT tile, substring(leaves FROM 33), \
             substring(positions FROM 9), subtree FROM log_tiles WHERE tile = 0 \
             ON CONFLICT (tile) DO UPDATE SET leaves = excluded.leaves"
                .to_string(),
        ]),
    }
    let before = store.log_tiles(0, 10).await.unwrap();
    for sql in &statements {
        let sql = sql.as_str();
        let refused = match backend {
            Backend::Sqlite => {
                let path = db.url.trim_start_matches("sqlite://");
                let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
                    .await
                    .unwrap();
                sqlx::query(sql).execute(&mut conn).await.expect_err(sql)
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.expect_err(sql)
            }
        };
        assert!(
            refused.to_string().contains("append-only"),
            "{sql}: {refused}"
        );
    }
    if backend == Backend::Postgres {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        for table in ["events", "log_tiles", "log_checkpoints"] {
            let refused = sqlx::query(&format!("TRUNCATE {table}"))
                .execute(&mut conn)
                .await
                .unwrap_err();
            assert!(refused.to_string().contains("append-only"), "{table}");
        }
    }
    assert_eq!(store.event_count().await.unwrap(), 2);
    assert_eq!(store.log_tiles(0, 10).await.unwrap(), before);
    // Logging the same events again (another process) is still allowed, and changes nothing.
    store.save_log_tiles(&before).await.unwrap();
    assert_eq!(store.log_tiles(0, 10).await.unwrap(), before);
}

async fn migrations_can_run_again(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    store.migrate().await.unwrap();
    assert_eq!(store.event_count().await.unwrap(), 0);
}

async fn idempotency_keys_are_reserved_replayed_and_released(backend: Backend) {
    use eucora::store::Lease;
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let now = chrono::Utc::now().timestamp_millis();
    let alive = Lease {
        holder: "a".into(),
        until: now + 60_000,
    };
    let reserve = |subject: &'static str, key: &'static str, hash: &'static str, lease: Lease| {
        let store = store.clone();
        async move {
            store
                .reserve_idempotency_key(subject, key, hash, "intent-1", &lease)
                .await
                .unwrap()
        }
    };
    let alice = |key, hash| reserve("alice", key, hash, alive.clone());
    assert_eq!(alice("k1", "h1").await, Reservation::Reserved);
    assert_eq!(alice("k1", "h1").await, Reservation::InFlight);
    assert_eq!(alice("k1", "h2").await, Reservation::Mismatch);
    store
        .complete_idempotency_key("alice", "k1", 201, "{\"ok\":1}")
        .await
        .unwrap();
    assert_eq!(
        alice("k1", "h1").await,
        Reservation::Replay {
            status: 201,
            body: "{\"ok\":1}".into()
        }
    );
    // Keys belong to a subject: another subject's same key is its own.
    assert_eq!(
        reserve("bob", "k1", "h9", alive.clone()).await,
        Reservation::Reserved
    );
    // A failed request releases its key (its holder only); an answered one keeps it.
    assert_eq!(alice("k2", "h1").await, Reservation::Reserved);
    store
        .release_idempotency_key("alice", "k2", "someone else")
        .await
        .unwrap();
    assert_eq!(alice("k2", "h1").await, Reservation::InFlight);
    store
        .release_idempotency_key("alice", "k2", "a")
        .await
        .unwrap();
    assert_eq!(alice("k2", "h1").await, Reservation::Reserved);
    store
        .release_idempotency_key("alice", "k1", "a")
        .await
        .unwrap();
    assert!(matches!(
        alice("k1", "h1").await,
        Reservation::Replay { .. }
    ));

    // A holder that stops renewing loses the key to exactly one taker, with the intent it named.
    let dying = Lease {
        holder: "dead".into(),
        until: now - 1,
    };
    assert_eq!(
        reserve("carol", "k3", "h1", dying).await,
        Reservation::Reserved
    );
    let taker = |holder: &'static str| Lease {
        holder: holder.into(),
        until: now + 60_000,
    };
    let (first, second) = tokio::join!(
        reserve("carol", "k3", "h1", taker("b")),
        reserve("carol", "k3", "h1", taker("c")),
    );
    let taken = [&first, &second]
        .iter()
        .filter(|r| {
            ***r == Reservation::TakenOver {
                intent_id: Some("intent-1".into()),
            }
        })
        .count();
    assert_eq!(taken, 1, "{first:?} {second:?}");
    assert!([&first, &second].contains(&&Reservation::InFlight));
    // A lease that is renewed stays held.
    let renewing = Lease {
        holder: "d".into(),
        until: now - 1,
    };
    assert_eq!(
        reserve("dave", "k4", "h1", renewing.clone()).await,
        Reservation::Reserved
    );
    let renewed = Lease {
        until: now + 60_000,
        ..renewing
    };
    store
        .renew_idempotency_key("dave", "k4", &renewed)
        .await
        .unwrap();
    assert_eq!(
        reserve("dave", "k4", "h1", taker("e")).await,
        Reservation::InFlight
    );
}

async fn tokens_are_looked_up_by_hash_only(backend: Backend) {
    use eucora::store::{AccessChange, AccessRefused, PrincipalState};
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let at = Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
    let change = |minutes: i64| AccessChange {
        actor: Actor {
            subject: "root".into(),
            role: Role::Admin,
        },
        correlation_id: format!("c{minutes}"),
        at: at + chrono::Duration::minutes(minutes),
    };
    let expires = at + chrono::Duration::days(90);
    let id = store
        .create_principal(
            "carol",
            Role::CabApprover,
            "ab12",
            expires,
            &change(0),
            None,
        )
        .await
        .unwrap();
    let (found, events) = store
        .principal_and_events_by_token_hash("ab12")
        .await
        .unwrap()
        .unwrap();
    // Read with its access events: its creation.
    assert!(
        matches!(
            events.as_slice(),
            [eucora_projections::access::AccessEvent::PrincipalCreated(c)] if c.subject == "carol"
        ),
        "{events:?}"
    );
    assert_eq!(
        (
            found.id,
            found.subject.as_str(),
            found.role,
            found.created_at
        ),
        (id, "carol", Role::CabApprover, at)
    );
    assert_eq!(found.expires_at, expires);
    assert_eq!(found.state(at), PrincipalState::Active);
    assert_eq!(found.state(expires), PrincipalState::Expired);
    assert!(store
        .principal_and_events_by_token_hash("AB12")
        .await
        .unwrap()
        .is_none());

    // Rotation swaps the hash; revocation is kept; each change is one event of its stream.
    let later = at + chrono::Duration::days(30);
    let rotated = store
        .rotate_principal(id, "cd34", later, &change(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rotated.expires_at, later);
    assert!(store
        .principal_and_events_by_token_hash("ab12")
        .await
        .unwrap()
        .is_none());
    let revoked = store
        .revoke_principal(id, &change(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(at + chrono::Duration::minutes(2)));
    assert_eq!(revoked.state(at), PrincipalState::Revoked);
    // Again: the same record, no second event. A revoked principal gets no new token.
    let again = store
        .revoke_principal(id, &change(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, revoked);
    assert_eq!(
        store
            .rotate_principal(id, "ef56", later, &change(4))
            .await
            .unwrap(),
        Err(AccessRefused::Revoked(id))
    );
    let nobody = Uuid::now_v7();
    assert_eq!(
        store.revoke_principal(nobody, &change(5)).await.unwrap(),
        Err(AccessRefused::NotFound(nobody))
    );
    // On PostgreSQL another test's open transaction may hold the stream back a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let rows = loop {
        let rows = store
            .read_global(None, 100, eucora::store::Columns::Streams)
            .await
            .unwrap();
        if rows.len() >= 3 || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let stream: Vec<(String, i64, String)> = rows
        .iter()
        .map(|r| {
            let s = r.stream().unwrap();
            let actor = r.decode().unwrap();
            let eucora_projections::decode::StreamEvent::Access(e) = actor else {
                panic!("{actor:?}")
            };
            assert_eq!(e.meta().principal_id, id);
            (s.aggregate_id.clone(), s.sequence, r.event_type.clone())
        })
        .collect();
    assert_eq!(
        stream,
        [
            (id.to_string(), 1, "PrincipalCreated".to_string()),
            (id.to_string(), 2, "PrincipalTokenRotated".to_string()),
            (id.to_string(), 3, "PrincipalRevoked".to_string()),
        ]
    );
    assert_eq!(store.principals().await.unwrap(), vec![revoked]);
}

async fn concurrent_reports_on_one_intent_lose_and_duplicate_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let commands = Arc::new(commands(&store));
    let id = Uuid::now_v7();
    commands
        .execute(id, cmd("alice", Role::Requester, create("race")))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|n| {
            let commands = commands.clone();
            tokio::spawn(async move {
                // `failed` tells the reports apart: the counts that may not fall are equal.
                let report = Action::Deploy(RolloutInput {
                    ring: Ring::Lab,
                    target_devices: 100,
                    succeeded: 80,
                    failed: n,
                    incidents: 0,
                });
                commands
                    .execute(id, cmd("ops", Role::Deployer, report))
                    .await
            })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => applied += 1,
            Err(CommandError::Contention) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(applied >= 1);
    let stream = store.intent_events(id).await.unwrap();
    assert_eq!(
        stream.len(),
        2 + applied,
        "one event per applied report, none lost or doubled"
    );
    let sequences: Vec<i64> = stream.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=stream.len() as i64).collect::<Vec<_>>());
    let mut reported: Vec<u64> = stream
        .iter()
        .filter_map(|e| match &e.event {
            DeploymentEvent::DeploymentDeployed(d) => Some(d.failed),
            _ => None,
        })
        .collect();
    reported.sort();
    reported.dedup();
    assert_eq!(
        reported.len(),
        applied,
        "every applied report is stored exactly once"
    );
}

async fn two_command_runners_on_one_store_never_act_on_a_stale_stream(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    // Two runners, as two server processes would have: each with its own stream cache.
    let (a, b) = (commands(&store), commands(&store));
    let id = Uuid::now_v7();
    let mut risky = create("stale");
    if let Action::Create(c) = &mut risky {
        c.privileged_tooling = true;
    }
    a.execute(id, cmd("alice", Role::Requester, risky))
        .await
        .unwrap();
    b.execute(
        id,
        cmd(
            "carol",
            Role::CabApprover,
            Action::Approve { comment: None },
        ),
    )
    .await
    .unwrap();
    // A still holds the stream as created (awaiting CAB); it must not refuse the deploy.
    let after_a = a
        .execute(id, cmd("ops", Role::Deployer, report(90)))
        .await
        .unwrap();
    assert_eq!(
        (after_a.status, after_a.stream_version),
        (Status::Deployed, 3)
    );
    // B holds version 2; its write loses the race, reloads, and lands as version 4.
    let after_b = b
        .execute(id, cmd("ops", Role::Deployer, report(91)))
        .await
        .unwrap();
    assert_eq!(after_b.stream_version, 4);
    // If-Match against the stored version works from a stale cache too.
    let mut expecting = cmd("ops", Role::Deployer, report(92));
    expecting.expected_version = Some(4);
    assert_eq!(a.execute(id, expecting).await.unwrap().stream_version, 5);
    let sequences: Vec<i64> = store
        .intent_events(id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5]);
}

/// Reads the global stream in pages of `page` until it has `expected` events (or 20 s pass).
///
/// An empty page does not mean the end: on PostgreSQL a transaction still open anywhere in the
/// cluster (another test's, say) holds back events committed after it began, until it ends.
pub async fn read_all(
    store: &eucora::store::Store,
    page: i64,
    expected: usize,
) -> Vec<(i64, String, i64)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (mut after, mut seen) = (0, vec![]);
    while seen.len() < expected && std::time::Instant::now() < deadline {
        let batch = store
            .read_global(
                (after > 0).then_some(after),
                page,
                eucora::store::Columns::Stored,
            )
            .await
            .unwrap();
        if batch.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for e in batch {
            after = e.position;
            let stream = e.stream.unwrap();
            seen.push((e.position, stream.aggregate_id, stream.sequence));
        }
    }
    seen
}

async fn the_global_stream_returns_every_event_once_in_a_stable_order(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let commands = commands(&store);
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    for (n, id) in ids.iter().enumerate() {
        commands
            .execute(*id, cmd("alice", Role::Requester, create(&format!("g{n}"))))
            .await
            .unwrap();
    }
    for id in &ids[..2] {
        commands
            .execute(*id, cmd("ops", Role::Deployer, report(90)))
            .await
            .unwrap();
    }
    let seen = read_all(&store, 3, 10).await;
    assert_eq!(seen.len(), 10);
    let mut positions: Vec<i64> = seen.iter().map(|e| e.0).collect();
    positions.sort();
    positions.dedup();
    assert_eq!(positions.len(), 10, "every event exactly once");
    for id in &ids {
        let sequences: Vec<i64> = seen
            .iter()
            .filter(|e| e.1 == id.to_string())
            .map(|e| e.2)
            .collect();
        assert!(
            sequences.windows(2).all(|w| w[0] < w[1]),
            "an intent's events in stream order"
        );
    }
    assert_eq!(
        read_all(&store, 1000, 10).await,
        seen,
        "a second read gives the same order"
    );
}

async fn the_intent_read_model_resumes_from_its_checkpoint_and_applies_each_event_once(
    backend: Backend,
) {
    use eucora::projection::intent_view::IntentView;
    use eucora::projection::Runner;
    use eucora::read::ListFilter;
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let commands = commands(&store);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    commands
        .execute(a, cmd("alice", Role::Requester, create("a")))
        .await
        .unwrap();
    commands
        .execute(b, cmd("alice", Role::Requester, create("b")))
        .await
        .unwrap();

    let runner = || Runner::new(store.clone(), 1000).register(IntentView::persisted());
    let mut first = runner();
    let mut applied = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while applied < 4 {
        applied += first.catch_up().await.unwrap();
        assert!(std::time::Instant::now() < deadline);
    }
    assert_eq!(
        first.catch_up().await.unwrap(),
        0,
        "resumes from its checkpoint"
    );

    // A second runner (a restart, or another process) starts from the stored checkpoint.
    commands
        .execute(a, cmd("ops", Role::Deployer, report(99)))
        .await
        .unwrap();
    let mut second = runner();
    let mut applied = 0;
    while applied < 1 {
        applied += second.catch_up().await.unwrap();
        assert!(std::time::Instant::now() < deadline);
    }
    assert_eq!(applied, 1, "only the new event");
    assert_eq!(
        first.catch_up().await.unwrap(),
        0,
        "the other runner's work is not redone"
    );

    let all = store
        .list_intents(&ListFilter::default(), 0, 10)
        .await
        .unwrap();
    let listed: Vec<(Uuid, Status, u64)> = all
        .iter()
        .map(|r| (r.state.id, r.state.status, r.state.stream_version))
        .collect();
    assert_eq!(listed, [(a, Status::Deployed, 3), (b, Status::Approved, 2)]);
    assert!(all[0].seq < all[1].seq);
    let deployed = ListFilter {
        status: Some(Status::Deployed),
        ..ListFilter::default()
    };
    assert_eq!(store.list_intents(&deployed, 0, 10).await.unwrap().len(), 1);
    assert_eq!(
        store
            .list_intents(&ListFilter::default(), all[0].seq, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A command acknowledged with 2xx must survive power loss, so SQLite syncs its write-ahead log at
/// every commit (FULL) unless the database URL says otherwise; OFF, or a level it does not know,
/// is refused with a message rather than ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_syncs_every_commit_unless_the_url_asks_otherwise() {
    use eucora::store::Store;
    let db = TestDb::new(Backend::Sqlite).await;
    let store = Store::connect(&db.url, 2).await.unwrap();
    assert_eq!(store.sqlite_synchronous().await.unwrap(), Some("FULL"));
    drop(store);
    let relaxed = Store::connect(&format!("{}?synchronous=normal", db.url), 2)
        .await
        .unwrap();
    assert_eq!(relaxed.sqlite_synchronous().await.unwrap(), Some("NORMAL"));
    drop(relaxed);
    for bad in ["off", "fast"] {
        let err = Store::connect(&format!("{}?synchronous={bad}", db.url), 2)
            .await
            .err()
            .expect("refused");
        assert!(
            err.to_string()
                .contains("use full (the default), extra or normal"),
            "{err}"
        );
    }
    let pg = TestDb::new(Backend::Postgres).await;
    let pg_store = Store::connect(&pg.url, 2).await.unwrap();
    assert_eq!(pg_store.sqlite_synchronous().await.unwrap(), None);
}
