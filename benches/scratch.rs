//! A scratch PostgreSQL database for one benchmark run, shared by the benches.

use sqlx::Connection;

/// The PostgreSQL the benchmarks use: `EUCORA_BENCH_DATABASE_URL`, else
/// `EUCORA_TEST_DATABASE_URL`; `None` when neither is set.
pub fn admin_url() -> Option<String> {
    std::env::var("EUCORA_BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("EUCORA_TEST_DATABASE_URL"))
        .ok()
}

/// A database created under `EUCORA_BENCH_DATABASE_URL` (else `EUCORA_TEST_DATABASE_URL`),
/// dropped by [`Scratch::drop_database`] unless `EUCORA_BENCH_KEEP_DATABASE` is set.
pub struct Scratch {
    pub url: String,
    admin: sqlx::PgConnection,
    name: String,
}

impl Scratch {
    /// `None` when no PostgreSQL is configured.
    pub async fn create() -> Option<Scratch> {
        let admin_url = admin_url()?;
        let name = format!("eucora_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("PostgreSQL at EUCORA_BENCH_DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create the scratch database");
        // The scratch database in place of the admin URL's, its parameters (`?sslmode=disable`)
        // kept.
        let (base, query) = admin_url.split_at(admin_url.find('?').unwrap_or(admin_url.len()));
        let url = format!(
            "{}/{name}{query}",
            &base[..base.rfind('/').unwrap_or(base.len())]
        );
        Some(Scratch { url, admin, name })
    }

    /// Drops it, unless `EUCORA_BENCH_KEEP_DATABASE` is set (to run a server on it after).
    pub async fn drop_database(mut self) {
        if std::env::var_os("EUCORA_BENCH_KEEP_DATABASE").is_some() {
            println!("(the PostgreSQL database is kept: {})", self.url);
            return;
        }
        let sql = format!("DROP DATABASE {} WITH (FORCE)", self.name);
        let _ = sqlx::query(&sql).execute(&mut self.admin).await;
    }
}

/// The benchmarks' references, on a pool of their own to the database under test, opened as the
/// store opens it (SQLite: one writer, WAL, at the `synchronous` level the URL asks for, FULL by
/// default, so the reference commits as durably as the server, and rows read ahead as far as the
/// store's readers read them; PostgreSQL: no ping before each query). Benchmark-only SQL lives
/// here, not in the service.
pub enum Reference {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

#[allow(dead_code)] // each bench uses some of these
impl Reference {
    pub async fn open(url: &str, pool_size: u32) -> Reference {
        use std::str::FromStr;
        if url.starts_with("postgres") {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(pool_size)
                .min_connections(pool_size)
                .test_before_acquire(false)
                .acquire_timeout(std::time::Duration::from_secs(5))
                .connect(url)
                .await
                .expect("connect the reference pool");
            return Reference::Postgres(pool);
        }
        let path = eucora::store::sqlite_file(url).expect("a SQLite file");
        let synchronous = eucora::store::sqlite_synchronous(url).expect("a synchronous level");
        let options = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(path)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true)
            .row_buffer_size(eucora::store::READER_ROW_BUFFER);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect_with(options)
            .await
            .expect("open the reference pool");
        Reference::Sqlite(pool)
    }

    /// One plain ordered scan of every event row, in the global stream's order, as a single
    /// query; returns (rows, bytes of payload and metadata).
    pub async fn scan_events(&self) -> (u64, u64) {
        use futures_util::TryStreamExt;
        type Row = (i64, String, String, i64, String, String, String, String);
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut count = |r: Row| {
            rows += 1;
            bytes += (r.6.len() + r.7.len()) as u64;
        };
        match self {
            Reference::Sqlite(pool) => {
                let mut stream = sqlx::query_as(
                    "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version,
                            payload, metadata FROM events ORDER BY position",
                )
                .fetch(pool);
                while let Some(row) = stream.try_next().await.expect("scan") {
                    count(row);
                }
            }
            Reference::Postgres(pool) => {
                let mut stream = sqlx::query_as(
                    "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version,
                            payload::text, metadata::text FROM events ORDER BY xact_id, position",
                )
                .fetch(pool);
                while let Some(row) = stream.try_next().await.expect("scan") {
                    count(row);
                }
            }
        }
        (rows, bytes)
    }

    /// The same scan of only the columns the runner's catch-up reads (position, type, version,
    /// payload), nothing decoded: what reading alone costs through this driver.
    pub async fn scan_catch_up_columns(&self) -> u64 {
        use futures_util::TryStreamExt;
        type Row = (i64, String, String, String);
        let mut rows = 0u64;
        match self {
            Reference::Sqlite(pool) => {
                let mut stream = sqlx::query_as::<_, Row>(
                    "SELECT position, event_type, event_version, payload FROM events ORDER BY position",
                )
                .fetch(pool);
                while stream.try_next().await.expect("scan").is_some() {
                    rows += 1;
                }
            }
            Reference::Postgres(pool) => {
                let mut stream = sqlx::query_as::<_, Row>(
                    "SELECT position, event_type, event_version, payload::text FROM events
                      ORDER BY xact_id, position",
                )
                .fetch(pool);
                while stream.try_next().await.expect("scan").is_some() {
                    rows += 1;
                }
            }
        }
        rows
    }

    /// Closes every connection of the reference pool.
    pub async fn close(&self) {
        match self {
            Reference::Sqlite(pool) => pool.close().await,
            Reference::Postgres(pool) => pool.close().await,
        }
    }

    /// An empty table for raw single-row inserts.
    pub async fn reset_raw_table(&self) {
        match self {
            Reference::Sqlite(pool) => {
                sqlx::query("DROP TABLE IF EXISTS bench_raw")
                    .execute(pool)
                    .await
                    .unwrap();
                sqlx::query(
                    "CREATE TABLE bench_raw (id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL)",
                )
                .execute(pool)
                .await
                .unwrap();
            }
            Reference::Postgres(pool) => {
                sqlx::query("DROP TABLE IF EXISTS bench_raw")
                    .execute(pool)
                    .await
                    .unwrap();
                sqlx::query(
                    "CREATE TABLE bench_raw (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload json NOT NULL)",
                )
                .execute(pool)
                .await
                .unwrap();
            }
        }
    }

    /// One durable single-row INSERT, in its own transaction.
    pub async fn insert_raw(&self, payload: &str) -> Result<(), sqlx::Error> {
        match self {
            Reference::Sqlite(pool) => {
                sqlx::query("INSERT INTO bench_raw (payload) VALUES (?1)")
                    .bind(payload)
                    .execute(pool)
                    .await?;
            }
            Reference::Postgres(pool) => {
                sqlx::query("INSERT INTO bench_raw (payload) VALUES ($1::json)")
                    .bind(payload)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }
}

/// The release `eucora serve` on `url`, its state directory (where it keeps checkpoints) in
/// `state`, with the environment `env` besides, once it answers ready: the child, its base URL,
/// and how long it took to catch up after it said where it listens.
#[allow(dead_code)] // each bench uses some of these
pub async fn serve_ready(
    url: &str,
    state: &std::path::Path,
    env: &[(&str, &std::path::Path)],
) -> (std::process::Child, String, std::time::Duration) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_eucora"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", url])
        .env("XDG_STATE_HOME", state)
        .envs(env.iter().copied());
    let (child, base) = listening(command);
    let client = reqwest::Client::new();
    let start = std::time::Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/health/ready")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    (child, base, start.elapsed())
}

/// Starts `command`, an `eucora serve`, and reads its output until it says where it listens (the
/// verifier key's line may come first): the child and its base URL.
#[allow(dead_code)] // each bench uses some of these
pub fn listening(mut command: std::process::Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start eucora serve");
    let stdout = std::io::BufReader::new(child.stdout.take().expect("serve's stdout"));
    let base = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("eucora listening on ")
                .map(|b| b.trim().to_string())
        })
        .expect("eucora serve did not say where it listens");
    (child, base)
}
