//! Principals: who a bearer token is, with a short cache, and the one way tokens are issued.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use eucora_projections::event::{Actor, Role};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

/// Lowercase hex SHA-256: how tokens are stored and request bodies fingerprinted.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Principals by token hash. A hit is kept for [`Principals::TTL`], so most requests skip a
/// database round trip; misses are not kept, so a new token works at once.
pub struct Principals {
    store: Store,
    cache: std::sync::Mutex<HashMap<String, (Actor, Instant)>>,
}

impl Principals {
    pub const TTL: Duration = Duration::from_secs(30);
    const MAX_CACHED: usize = 10_000;

    pub fn new(store: Store) -> Self {
        Principals {
            store,
            cache: Default::default(),
        }
    }

    pub async fn by_token_hash(&self, hash: &str) -> Result<Option<Actor>, StoreError> {
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((actor, at)) = cache.get(hash) {
                if at.elapsed() < Self::TTL {
                    return Ok(Some(actor.clone()));
                }
            }
        }
        let found = self.store.principal_by_token_hash(hash).await?;
        if let Some(actor) = &found {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= Self::MAX_CACHED {
                cache.retain(|_, (_, at)| at.elapsed() < Self::TTL);
            }
            if cache.len() < Self::MAX_CACHED {
                cache.insert(hash.to_string(), (actor.clone(), Instant::now()));
            }
        }
        Ok(found)
    }
}

/// Creates a principal with a new random bearer token and returns the token. Only its SHA-256 is
/// stored, so this is the one moment the token can be read.
pub async fn issue_token(store: &Store, subject: &str, role: Role) -> Result<String, StoreError> {
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let token = format!("eucora_{}", hex::encode(secret));
    store
        .create_principal(subject, role, &sha256_hex(token.as_bytes()))
        .await?;
    Ok(token)
}
