//! Principals: who a bearer token is, whether it still works, how often it may call, and the one
//! way tokens are issued and rotated.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use eucora_projections::access::PrincipalFacts;
use eucora_projections::event::{Actor, ConnectorType, Role};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::{
    AccessChange, AccessRefused, PrincipalRecord, PrincipalState, Store, StoreError,
};

/// Lowercase hex SHA-256: how tokens are stored and request bodies fingerprinted.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// How long a token works when nobody says otherwise.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(90 * 86_400);
/// The longest lifetime a token may be given.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3 * 366 * 86_400);

/// What a bearer token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    Principal {
        id: Uuid,
        actor: Actor,
    },
    /// Why it was refused, as the failed-authentication metric counts it.
    Refused(AuthFailure),
}

/// What a token presented from a client address came to ([`Principals::present`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Presented {
    Principal {
        id: Uuid,
        actor: Actor,
    },
    /// Why it was refused, as the failed-authentication metric counts it.
    Refused(AuthFailure),
    /// The address's failed authentications are spent until `wait` has passed: refused before
    /// the token was looked up (`failure` is `None`), or by this very failure.
    Limited {
        wait: Duration,
        failure: Option<AuthFailure>,
    },
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header, or one that is not a token.
    Missing,
    /// A token no principal has.
    Unknown,
    Expired,
    Revoked,
    /// A principal whose row does not agree with its access events (made or changed by hand in
    /// the database): refused, and logged as an integrity failure.
    Unrecorded,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 5] = [
        AuthFailure::Missing,
        AuthFailure::Unknown,
        AuthFailure::Expired,
        AuthFailure::Revoked,
        AuthFailure::Unrecorded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
            AuthFailure::Unrecorded => "unrecorded",
        }
    }
}

/// Principals by token hash, looked up on every request: a revoked or rotated token stops
/// working on every server as its change commits (there is no cache to wait out). With a rate
/// limit, each principal may make that many requests a minute (all of them at once, at most).
pub struct Principals {
    store: Store,
    limiter: Option<governor::DefaultKeyedRateLimiter<Uuid>>,
    addresses: Option<AddressGuard>,
}

impl Principals {
    /// `per_minute`: requests each principal may make a minute; `failures_per_minute`: failed
    /// authentications each client address may make a minute (see [`AddressGuard`]).
    pub fn new(
        store: Store,
        per_minute: Option<NonZeroU32>,
        failures_per_minute: Option<NonZeroU32>,
    ) -> Self {
        Principals {
            store,
            limiter: per_minute
                .map(|n| governor::RateLimiter::keyed(governor::Quota::per_minute(n))),
            addresses: failures_per_minute.map(AddressGuard::new),
        }
    }

    /// Authenticates the token hashing to `token_hash` (`None`: no token was presented) from
    /// `address`, under the per-address limit on failed authentications ([`AddressGuard`]): the
    /// one door the API and the console's sign-in go through.
    pub async fn present(
        &self,
        address: Option<IpAddr>,
        token_hash: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Presented, StoreError> {
        let guard = self.addresses.as_ref().zip(address);
        if let Some((guard, address)) = guard {
            if let Err(wait) = guard.admit(address) {
                return Ok(Presented::Limited {
                    wait,
                    failure: None,
                });
            }
        }
        let found = match token_hash {
            Some(hash) => self.authenticate(hash, now).await?,
            None => Authenticated::Refused(AuthFailure::Missing),
        };
        Ok(match found {
            Authenticated::Principal { id, actor } => Presented::Principal { id, actor },
            Authenticated::Refused(reason) => match guard.map(|(g, a)| g.failed(a)) {
                Some(Err(wait)) => Presented::Limited {
                    wait,
                    failure: Some(reason),
                },
                _ => Presented::Refused(reason),
            },
        })
    }

    /// Who the token hashing to `hash` is at `now`, if its principal exists, has not expired and
    /// is not revoked.
    pub async fn authenticate(
        &self,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Authenticated, StoreError> {
        let Some((record, events)) = self.store.principal_and_events_by_token_hash(hash).await?
        else {
            return Ok(Authenticated::Refused(AuthFailure::Unknown));
        };
        // The row must be what its events say: one made or raised by hand is not a principal.
        if let Some(why) = disagreement(&record, PrincipalFacts::fold(&events).as_ref()) {
            tracing::error!(principal = %record.id, integrity = %why, "principal refused");
            return Ok(Authenticated::Refused(AuthFailure::Unrecorded));
        }
        Ok(match record.state(now) {
            PrincipalState::Active => Authenticated::Principal {
                id: record.id,
                actor: record.actor(),
            },
            PrincipalState::Expired => Authenticated::Refused(AuthFailure::Expired),
            PrincipalState::Revoked => Authenticated::Refused(AuthFailure::Revoked),
        })
    }

    /// Takes one request from principal `id`'s allowance; when it has none left, how long until
    /// it has.
    pub fn admit(&self, id: Uuid) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&id).map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(limiter.clock()))
        })
    }
}

/// Failed authentications by client address. An address that spends its allowance (so many a
/// minute, all of them at once at most) is refused with 429 before its token is even looked up,
/// whatever the token, until the allowance refills: so guessing tokens earns 429s, and a guesser
/// cannot tell a right guess from a wrong one while refused. The key is the TCP peer's address:
/// behind a reverse proxy every client shares the proxy's.
pub struct AddressGuard {
    failures: governor::DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses refused outright, and until when.
    refused: Mutex<HashMap<IpAddr, Instant>>,
}

/// How many refused addresses are kept before the lapsed ones are dropped.
const REFUSED_ADDRESSES_KEPT: usize = 10_000;

impl AddressGuard {
    pub fn new(failures_per_minute: NonZeroU32) -> Self {
        AddressGuard {
            failures: governor::RateLimiter::keyed(governor::Quota::per_minute(
                failures_per_minute,
            )),
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `address` may present a token now; how long until it may, when it may not.
    pub fn admit(&self, address: IpAddr) -> Result<(), Duration> {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        match refused.get(&address) {
            Some(until) => match until.checked_duration_since(Instant::now()) {
                Some(wait) if !wait.is_zero() => Err(wait),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Counts a failed authentication from `address`; when that spends its allowance, the
    /// address is refused, and for how long is returned.
    pub fn failed(&self, address: IpAddr) -> Result<(), Duration> {
        let Err(not_until) = self.failures.check_key(&address) else {
            return Ok(());
        };
        let wait = not_until.wait_time_from(governor::clock::Clock::now(self.failures.clock()));
        let now = Instant::now();
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.len() >= REFUSED_ADDRESSES_KEPT {
            refused.retain(|_, until| *until > now);
            self.failures.retain_recent();
        }
        refused.insert(address, now + wait);
        Err(wait)
    }
}

/// Why a principal's row does not agree with what its events say, if it does not. Times are
/// compared to the microsecond (what PostgreSQL keeps).
pub fn disagreement(record: &PrincipalRecord, facts: Option<&PrincipalFacts>) -> Option<String> {
    let Some(facts) = facts else {
        return Some(format!(
            "principal {} ({}) has no PrincipalCreated event: it was made by hand in the database",
            record.id, record.subject
        ));
    };
    let micros = |t: DateTime<Utc>| t.timestamp_micros();
    let what = if facts.subject != record.subject {
        format!(
            "its subject is {:?}, its events say {:?}",
            record.subject, facts.subject
        )
    } else if facts.role != record.role {
        format!(
            "its role is {}, its events say {}",
            record.role.as_str(),
            facts.role.as_str()
        )
    } else if facts.revoked != record.revoked_at.is_some() {
        if facts.revoked {
            "it is not revoked, its events revoke it".to_string()
        } else {
            "it is revoked, no event revokes it".to_string()
        }
    } else if micros(facts.expires_at) != micros(record.expires_at) {
        format!(
            "it expires {}, its events say {}",
            record.expires_at, facts.expires_at
        )
    } else {
        return None;
    };
    Some(format!(
        "principal {} ({}) does not match its access events: {what}; it was changed by hand in \
         the database",
        record.id, record.subject
    ))
}

/// Every principal whose row does not agree with its access events, and why: for replay and the
/// check at start-up.
pub async fn disagreements(store: &Store) -> Result<Vec<String>, StoreError> {
    Ok(store
        .principals_and_events()
        .await?
        .iter()
        .filter_map(|(record, events)| disagreement(record, PrincipalFacts::fold(events).as_ref()))
        .collect())
}

/// A change made at the command line, by the person `by` names (`--by`), else by the login
/// running it: `cli:<name>`, acting as an admin (they hold the database itself), under a
/// correlation id of its own. With neither, it is refused: an access change always has an
/// author of record.
pub fn operator_change(by: Option<&str>) -> Result<AccessChange, String> {
    let name = match by {
        Some(by) => {
            let by = by.trim();
            if by.is_empty() || by.chars().count() > 64 || by.chars().any(char::is_control) {
                return Err("--by must be 1 to 64 printable characters".into());
            }
            by.to_string()
        }
        None => std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty() && u.len() <= 64 && !u.chars().any(char::is_control))
            .ok_or(
                "say who makes this access change: --by NAME (no login name is known here: USER \
                 and LOGNAME are unset)",
            )?,
    };
    Ok(AccessChange {
        actor: Actor {
            subject: format!("cli:{name}"),
            role: Role::Admin,
        },
        correlation_id: format!("cli-{}", Uuid::new_v4()),
        at: Utc::now(),
    })
}

/// A principal as the API and `eucora token list --json` show it: never its token or hash.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PrincipalOut {
    pub id: Uuid,
    pub subject: String,
    #[schema(value_type = String, example = "deployer")]
    pub role: Role,
    /// `active`, `expired` or `revoked`, now.
    #[schema(example = "active")]
    pub state: &'static str,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who granted it, as its `PrincipalCreated` event records (`cli:<name>` at the command
    /// line, the admin's subject over the API).
    pub granted_by: Option<String>,
}

impl PrincipalOut {
    /// `record` as shown at `now`, with its grantor from `grantors` (by principal id).
    pub fn new(
        record: PrincipalRecord,
        now: DateTime<Utc>,
        grantors: &std::collections::HashMap<Uuid, String>,
    ) -> PrincipalOut {
        PrincipalOut {
            granted_by: grantors.get(&record.id).cloned(),
            state: record.state(now).as_str(),
            id: record.id,
            subject: record.subject,
            role: record.role,
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
        }
    }
}

/// A new random bearer token and the SHA-256 the store keeps of it.
/// 32 random bytes, hex: a token's or a console session's secret.
pub fn random_secret() -> String {
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    hex::encode(secret)
}

fn new_token() -> (String, String) {
    let token = format!("eucora_{}", random_secret());
    let hash = sha256_hex(token.as_bytes());
    (token, hash)
}

/// When a token made at `at` to last `lifetime` expires; an error in our words when the lifetime
/// is zero or longer than [`MAX_TOKEN_LIFETIME`].
pub fn expiry(at: DateTime<Utc>, lifetime: Duration) -> Result<DateTime<Utc>, String> {
    if lifetime.is_zero() || lifetime > MAX_TOKEN_LIFETIME {
        return Err(format!(
            "a token may last from 1s to {} days",
            MAX_TOKEN_LIFETIME.as_secs() / 86_400
        ));
    }
    chrono::Duration::from_std(lifetime)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .ok_or_else(|| "that lifetime is out of range".to_string())
}

/// Subject prefixes only the server acts under: its connectors (`connector:`, also the subject of
/// a connector's own principal, role `connector`, and of nothing else), its own jobs
/// (`system:`), operators at the command line (`cli:`, the author of access changes) and
/// automatic approvals (`policy:`, the approver of record). No other principal may be made with
/// one, so nobody can act, or be recorded, as them.
pub const RESERVED_SUBJECT_PREFIXES: [&str; 4] = ["connector:", "system:", "cli:", "policy:"];

/// A subject a principal in `role` may be given: 1 to 128 printable characters, not reserved;
/// a connector's is `connector:<its name>` and nothing else.
pub fn check_subject(subject: &str, role: Role) -> Result<(), String> {
    if subject.is_empty() || subject.len() > 128 || subject.chars().any(char::is_control) {
        return Err("--subject must be 1 to 128 printable characters".into());
    }
    if role == Role::Connector {
        let named = subject
            .strip_prefix("connector:")
            .is_some_and(ConnectorType::is_name);
        if !named {
            return Err(format!(
                "--subject {subject:?}: a connector's principal is connector:<its name>, the \
                 name its table has in the connectors file (like connector:intune)"
            ));
        }
        return Ok(());
    }
    let lower = subject.to_ascii_lowercase();
    if let Some(prefix) = RESERVED_SUBJECT_PREFIXES
        .iter()
        .find(|p| lower.starts_with(*p))
    {
        return Err(format!(
            "--subject {subject:?} is reserved: subjects beginning {prefix:?} are the server's \
             own (its connectors, its jobs, operators' and the policy's records); choose another"
        ));
    }
    Ok(())
}

/// Creates a principal with a new random bearer token expiring at `expires_at`, and returns its
/// id and the token. Only the token's SHA-256 is stored, so this is the one moment it can be read.
pub async fn issue_token(
    store: &Store,
    subject: &str,
    role: Role,
    expires_at: DateTime<Utc>,
    change: &AccessChange,
    conflict_allowed: Option<&str>,
) -> Result<(Uuid, String), StoreError> {
    let (token, hash) = new_token();
    let id = store
        .create_principal(subject, role, &hash, expires_at, change, conflict_allowed)
        .await?;
    Ok((id, token))
}

/// Whether one subject may not hold both roles: who requests a change must not be who decides
/// it on the CAB.
pub fn roles_conflict(a: Role, b: Role) -> bool {
    matches!(
        (a, b),
        (Role::Requester, Role::CabApprover) | (Role::CabApprover, Role::Requester)
    )
}

/// The roles `subject` holds now (active principals) that conflict with `role`.
pub async fn conflicting_roles(
    store: &Store,
    subject: &str,
    role: Role,
    now: DateTime<Utc>,
) -> Result<Vec<Role>, StoreError> {
    Ok(store
        .principals()
        .await?
        .into_iter()
        .filter(|p| {
            p.subject == subject
                && p.state(now) == crate::store::PrincipalState::Active
                && roles_conflict(p.role, role)
        })
        .map(|p| p.role)
        .collect())
}

/// Gives principal `id` a new token expiring at `expires_at`; the old token stops working as
/// this commits.
pub async fn rotate_token(
    store: &Store,
    id: Uuid,
    expires_at: DateTime<Utc>,
    change: &AccessChange,
) -> Result<Result<(PrincipalRecord, String), AccessRefused>, StoreError> {
    let (token, hash) = new_token();
    Ok(store
        .rotate_principal(id, &hash, expires_at, change)
        .await?
        .map(|record| (record, token)))
}
