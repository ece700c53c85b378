//! Principals: subjects with a role, known by the SHA-256 of their bearer token.

use chrono::Utc;
use eucora_projections::event::{Actor, Role};
use uuid::Uuid;

use super::{Db, Store, StoreError};

impl Store {
    /// Records a principal known by the SHA-256 of its token.
    pub async fn create_principal(
        &self,
        subject: &str,
        role: Role,
        token_hash: &str,
    ) -> Result<Uuid, StoreError> {
        let id = Uuid::now_v7();
        match &self.db {
            Db::Sqlite { writer, .. } => {
                sqlx::query(
                    "INSERT INTO principals (id, subject, role, token_hash, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .bind(id.to_string())
                .bind(subject)
                .bind(role.as_str())
                .bind(token_hash)
                .bind(Utc::now().to_rfc3339())
                .execute(writer)
                .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO principals (id, subject, role, token_hash, created_at)
                     VALUES ($1, $2, $3, $4, now())",
                )
                .bind(id)
                .bind(subject)
                .bind(role.as_str())
                .bind(token_hash)
                .execute(pool)
                .await?;
            }
        }
        Ok(id)
    }

    /// The principal whose token hashes to `token_hash`.
    pub async fn principal_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<Actor>, StoreError> {
        let sql = "SELECT subject, role FROM principals WHERE token_hash = $1";
        let row: Option<(String, String)> = on_reader!(&self.db, pool => {
            sqlx::query_as(sql).bind(token_hash).fetch_optional(pool).await?
        });
        Ok(row.and_then(|(subject, role)| Role::parse(&role).map(|role| Actor { subject, role })))
    }
}
