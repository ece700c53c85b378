//! The accept loop: what `axum::serve` does, with the limits a service facing hostile clients
//! needs and axum does not offer. A connection must send a request's headers within
//! `header_read_timeout`, counted from when it opens and again from each response (hyper's
//! header-read timer, which is also its idle timeout); at most `max_connections` are open at once,
//! and past that a new connection is closed at once rather than queued; accept errors (out of file
//! descriptors) are waited out instead of ending the server. A path's trailing slash is ignored
//! (`/api/v1/metrics/` is `/api/v1/metrics`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_http::normalize_path::NormalizePath;

/// The connection limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Further connections, each answering only the health probes and with a short header
    /// timeout, taken when the ordinary ones are all in use.
    pub reserve: usize,
    /// How long a connection may take to send a request's headers, or stay idle between requests.
    pub header_read_timeout: Duration,
}

/// The most header bytes hyper buffers for one request before refusing it.
const MAX_BUF: usize = 64 * 1024;
/// A reserve connection's time to send its one request's headers.
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `router` on `listener` until `shutdown` resolves, then waits for open connections to
/// finish their requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let reserve = Arc::new(Semaphore::new(limits.reserve));
    let probes = super::probes_only(router.clone());
    let mut reserved = Builder::new(TokioExecutor::new()).http1_only();
    reserved
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(RESERVE_HEADER_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_BUF);
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.header_read_timeout))
        .keep_alive_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: every other connection still works; try again soon.
                    tracing::warn!(error = %e, "cannot accept a connection; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // An ordinary slot, else a probes-only one, else the connection is closed unserved.
        let (slot, builder, router, first_byte) =
            if let Ok(slot) = slots.clone().try_acquire_owned() {
                let timeout = limits.header_read_timeout;
                (slot, builder.clone(), router.clone(), timeout)
            } else if let Ok(slot) = reserve.clone().try_acquire_owned() {
                let timeout = RESERVE_HEADER_TIMEOUT;
                (slot, reserved.clone(), probes.clone(), timeout)
            } else {
                drop(stream);
                continue;
            };
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // Telling HTTP/1 from HTTP/2 waits for the first bytes, before hyper's header timer
            // starts: a connection that never speaks is closed here.
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(first_byte, stream.peek(&mut first)).await,
                Ok(Ok(1..))
            ) {
                drop(slot);
                return;
            }
            let io = TokioIo::new(stream);
            // The predecessor's clients and scrape configs use paths with a trailing slash. The
            // peer's address keys the limit on failed authentications.
            let router = router.map_request(move |mut req: axum::http::Request<_>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
            let service = TowerToHyperService::new(NormalizePath::trim_trailing_slash(router));
            let connection = builder.serve_connection_with_upgrades(io, service);
            // Timeouts and resets end connections all the time; nothing to report.
            let _ = watcher.watch(connection.into_owned()).await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
