//! Store outage: the database goes away mid-run. Requests get 503 with
//! `Retry-After`, nothing panics, service resumes when the database returns, and the projections
//! catch up with no gap or duplicate.
//!
//! The shared PostgreSQL cannot be stopped under a parallel suite, so the server reaches it
//! through a TCP proxy of the test's own, and the outage is the proxy cutting every connection and
//! refusing new ones, as a stopped server would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::helpers::{eucora, intent_body, Backend, Crew, TestApp, TestDb};

/// A TCP proxy to `target` that can be taken down (every connection cut, new ones closed at once)
/// and brought back.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (flag, open) = (up.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let forward = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                open.lock().unwrap().push(forward.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            addr,
            up,
            connections,
            accept,
        }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
        self.accept.abort();
    }
}

/// `url` with its host and port replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!("{scheme}://{}{addr}/{path}", userinfo.unwrap_or_default())
}

fn pg_addr(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    };
    host.replace("localhost", "127.0.0.1").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_answers_503_then_service_resumes_with_no_gap() {
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = Proxy::start(pg_addr(&db.url)).await;
    let mut app = TestApp::spawn_on_shared_via(&db, &via(&db.url, proxy.addr)).await;
    let crew = Crew::new(&app);
    for n in 0..3 {
        let id = app
            .create(
                &crew.requester,
                intent_body(&format!("before{n}"), 0.2, "GLOBAL"),
            )
            .await
            .id();
        app.deploy(&crew.deployer, &id, "LAB", 10, 10).await;
    }
    let before = db.event_count().await;

    proxy.down();
    // Writes, reads and readiness all answer 503 with Retry-After, as problem+json.
    let create = app
        .try_send(
            Method::POST,
            "/api/v1/deployments",
            Some(&crew.requester),
            &[],
            Some(intent_body("during", 0.2, "GLOBAL").to_string()),
        )
        .await
        .expect("the server answers while its database is away");
    create.assert_problem(503);
    assert!(create.headers.contains_key("retry-after"), "{create:#?}");
    let list = app
        .send(
            Method::GET,
            "/api/v1/deployments",
            Some(&crew.auditor),
            &[],
            None,
        )
        .await;
    list.assert_problem(503);
    let ready = app
        .send(Method::GET, "/health/ready", None, &[], None)
        .await;
    assert_eq!(ready.status, 503, "{ready:#?}");
    let live = app.send(Method::GET, "/health/live", None, &[], None).await;
    assert_eq!(live.status, 200, "the process itself is fine");

    proxy.restore();
    assert_eq!(
        db.event_count().await,
        before,
        "nothing was appended during the outage"
    );
    // Service resumes: the first requests may still meet a connection the outage broke.
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = loop {
        let reply = app
            .try_send(
                Method::POST,
                "/api/v1/deployments",
                Some(&crew.requester),
                &[],
                Some(intent_body("after", 0.2, "GLOBAL").to_string()),
            )
            .await;
        match reply {
            Some(reply) if reply.status == 201 => break reply,
            Some(reply) => reply.assert_problem(503),
            None => {}
        }
        assert!(Instant::now() < deadline, "service never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    app.deploy(&crew.deployer, &resumed.id(), "LAB", 10, 10)
        .await;
    assert!(
        app.wait_exit(Duration::ZERO).is_none(),
        "the server is still running"
    );

    // The projections caught up with no gap or duplicate: the live metrics equal a replay of the
    // stream, byte for byte.
    // One more intent: created, approved by policy, one report.
    assert_eq!(db.event_count().await, before + 3);
    // eucora_events_total counts every event of every stream (the principals' too).
    let count = db.event_count().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let served = loop {
        let reply = app
            .send(Method::GET, "/api/v1/metrics", None, &[], None)
            .await;
        let text = reply.body.as_str().unwrap_or_default().to_string();
        let events: u64 = text
            .lines()
            .filter(|l| l.starts_with("eucora_events_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if events == count as u64 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics never caught up:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = db.dir().join("replayed.prom");
    let (ok, _, err) = eucora(&[
        "replay",
        "--database-url",
        &db.url,
        "--metrics-out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        crate::metrics::domain_part(&served),
        std::fs::read_to_string(&out).unwrap(),
        "the metrics served after the outage equal a replay of the stream"
    );
    // The intent list, a persisted projection, caught up too.
    app.list_until(&crew.auditor, "?limit=100", 4).await;
}
