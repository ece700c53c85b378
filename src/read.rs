//! The read side as the API serves it: one intent folded from its own stream, lists from the
//! persisted intent read model.

use async_trait::async_trait;
use eucora_projections::intent::IntentState;
use uuid::Uuid;

pub use crate::store::ListFilter;
use crate::store::{Store, StoreError};

/// One page of intents, in creation order, and where the next page starts.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<IntentState>,
    pub next_cursor: Option<i64>,
}

/// Where reads are served from.
#[async_trait]
pub trait IntentReader: Send + Sync {
    async fn get(&self, id: Uuid) -> Result<Option<IntentState>, StoreError>;
    async fn list(&self, filter: &ListFilter, after: i64, limit: usize)
        -> Result<Page, StoreError>;
}

/// One intent is folded from its own stream on request: one indexed read, always current, so a
/// client reads its own writes. Lists come from the persisted read model, which the projection
/// runner keeps within a second of the store.
pub struct ReadModel {
    store: Store,
}

impl ReadModel {
    pub fn new(store: Store) -> Self {
        ReadModel { store }
    }
}

#[async_trait]
impl IntentReader for ReadModel {
    async fn get(&self, id: Uuid) -> Result<Option<IntentState>, StoreError> {
        let events = self.store.intent_events(id).await?;
        Ok(IntentState::replay(events.iter().map(|e| &e.event)))
    }

    async fn list(
        &self,
        filter: &ListFilter,
        after: i64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        // One extra row tells whether another page follows.
        let mut rows = self
            .store
            .list_intents(filter, after, limit as i64 + 1)
            .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok(Page {
            next_cursor: more.then(|| rows.last().map(|r| r.seq)).flatten(),
            items: rows.into_iter().map(|r| r.state).collect(),
        })
    }
}
