//! A scratch PostgreSQL database for one benchmark run, shared by the benches.

use sqlx::Connection;

/// A database created under `EUCORA_BENCH_DATABASE_URL` (else `EUCORA_TEST_DATABASE_URL`),
/// dropped by [`Scratch::drop_database`].
pub struct Scratch {
    pub url: String,
    admin: sqlx::PgConnection,
    name: String,
}

impl Scratch {
    /// `None` when no PostgreSQL is configured.
    pub async fn create() -> Option<Scratch> {
        let admin_url = std::env::var("EUCORA_BENCH_DATABASE_URL")
            .or_else(|_| std::env::var("EUCORA_TEST_DATABASE_URL"))
            .ok()?;
        let name = format!("eucora_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("PostgreSQL at EUCORA_BENCH_DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create the scratch database");
        let base = admin_url.split('?').next().unwrap_or(&admin_url);
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap_or(base.len())]);
        Some(Scratch { url, admin, name })
    }

    pub async fn drop_database(mut self) {
        let sql = format!("DROP DATABASE {} WITH (FORCE)", self.name);
        let _ = sqlx::query(&sql).execute(&mut self.admin).await;
    }
}
