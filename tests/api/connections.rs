//! What a hostile client does with connections: never speak, speak one byte at a time, idle after
//! a request, or open more than the server allows. Each is bounded, and the health probes keep
//! answering.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backend, TestApp};

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_string()
}

/// Waits until the server closes `stream` (EOF or reset); how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection was still open after {limit:?}"),
        }
    }
}

/// One request on a fresh connection; the status code, or `None` if the server closed it unanswered.
async fn status_on_new_connection(app: &TestApp, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr(app)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_connections_are_closed() {
    let app = TestApp::spawn_with(Backend::Sqlite, &["--header-read-timeout", "1"]).await;
    // Never speaks.
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await < Duration::from_secs(3));

    // Slowloris: a byte every 250 ms, the headers never finished.
    let mut slow = TcpStream::connect(addr(&app)).await.unwrap();
    slow.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let dripping = async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if slow.write_all(b"X").await.is_err() {
                return;
            }
            if started.elapsed() > Duration::from_secs(10) {
                panic!("a connection sending a byte every 250 ms was kept for 10 s");
            }
        }
    };
    dripping.await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Idle after a request on a kept-alive connection.
    let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await < Duration::from_secs(3));

    // The server still serves.
    assert_eq!(
        status_on_new_connection(&app, "/health/live").await,
        Some(200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limit_new_connections_close_and_probes_still_answer() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &["--max-connections", "4", "--header-read-timeout", "30"],
    )
    .await;
    // The test's own client holds a kept-alive connection from the readiness check; four silent
    // sockets take whatever ordinary slots are left.
    let mut hogs = Vec::new();
    for _ in 0..4 {
        hogs.push(TcpStream::connect(addr(&app)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The reserve answers the probes, and nothing else.
    assert_eq!(
        status_on_new_connection(&app, "/health/live").await,
        Some(200)
    );
    assert_eq!(
        status_on_new_connection(&app, "/health/ready").await,
        Some(200)
    );
    assert_eq!(
        status_on_new_connection(&app, "/api/v1/deployments").await,
        Some(503)
    );
    // Past the reserve too, a new connection is closed at once, unserved.
    for _ in 0..16 {
        hogs.push(TcpStream::connect(addr(&app)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = TcpStream::connect(addr(&app)).await.unwrap();
    assert!(closed_within(&mut refused, Duration::from_secs(2)).await < Duration::from_secs(1));
    // When the hogs go, service comes back.
    hogs.clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_on_new_connection(&app, "/api/v1/deployments").await != Some(401) {
        assert!(Instant::now() < deadline, "service never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
