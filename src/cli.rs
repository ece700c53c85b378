//! The command line's subcommands, one module each group, and what they share: opening the
//! store, writing to standard output without panicking on a closed pipe, how a command fails
//! (and with which exit status), and the shutdown signal. `main.rs` only parses the arguments and
//! hands each subcommand to its module here.
//!
//! - [`server`]: `serve`, `migrate`, `connector-sim`;
//! - [`token`]: `token create|list|rotate|revoke`;
//! - [`audit`]: `events`, `replay`;
//! - [`evidence`]: `evidence export|verify`, `key generate`;
//! - [`observability`]: `demo`, `slo rules|tests`;
//! - [`client`]: `deployments …`, against a running server ([`table`] prints for people, and
//!   `eucora_projections::describe` says each event in words).

pub mod audit;
pub mod client;
pub mod evidence;
pub mod observability;
pub mod policy;
pub mod server;
pub mod table;
pub mod token;

use std::process::ExitCode;

use crate::config::DbArgs;
use crate::store::Store;

/// Why a command stopped early.
#[derive(Debug)]
pub enum Failure {
    /// Said on stderr; exit status 1.
    Message(String),
    /// The server refused the request (4xx); its detail is said on stderr; exit status 3.
    Refused(String),
    /// The command did its work and found what its user must act on (evidence whose controls
    /// fail); said on stderr; exit status 3.
    Findings(String),
    /// Standard output was closed by its reader: stop quietly, as `cat` would.
    OutputClosed,
}

/// The exit status of a command refused by the server, or whose findings need acting on.
pub const EXIT_REFUSED: u8 = 3;

impl Failure {
    /// Says why on stderr and gives the exit status.
    pub fn report(self) -> ExitCode {
        match self {
            Failure::OutputClosed => ExitCode::SUCCESS,
            Failure::Message(message) => {
                eprintln!("eucora: {message}");
                ExitCode::FAILURE
            }
            Failure::Refused(message) => {
                eprintln!("eucora: refused: {message}");
                ExitCode::from(EXIT_REFUSED)
            }
            Failure::Findings(message) => {
                eprintln!("eucora: {message}");
                ExitCode::from(EXIT_REFUSED)
            }
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Message(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::Message(message.to_string())
    }
}

/// Writes one line to standard output; a closed pipe ends the command quietly instead of
/// panicking, as `println!` would.
pub fn say(line: std::fmt::Arguments) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::OutputClosed),
        Err(e) => Err(Failure::Message(format!(
            "cannot write to standard output: {e}"
        ))),
    }
}

/// Opens the store, creating it if need be (`migrate`, `token create --init`), and says so on
/// standard error when it created one.
pub async fn open(db: &DbArgs) -> Result<Store, String> {
    let created = crate::store::missing_sqlite_file(&db.database_url).map(crate::domain::absolute);
    let store = Store::connect(&db.database_url, db.db_pool_size)
        .await
        .map_err(|e| format!("cannot open {}: {e}", redact(&db.database_url)))?;
    store.migrate().await.map_err(|e| e.to_string())?;
    if let Some(path) = created {
        eprintln!("created a new database at {path}");
    }
    Ok(store)
}

/// Opens a store that must already exist: a command that reads one never leaves a new, empty
/// database behind.
pub async fn open_existing(db: &DbArgs) -> Result<Store, String> {
    if let Some(path) = crate::store::missing_sqlite_file(&db.database_url) {
        return Err(format!(
            "no database at {}: pass --database-url (or set EUCORA_DATABASE_URL) to the \
             server's database",
            crate::domain::absolute(path)
        ));
    }
    open(db).await
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives right after start-up is not missed.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    #[cfg(unix)]
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
    let ctrl_c = tokio::signal::ctrl_c();
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {},
            _ = terminate.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown signal received");
    })
}
