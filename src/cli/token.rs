//! `eucora token create|list|rotate|revoke`: principals, changed as the operator running it.

use eucora_projections::event::Role;

use super::{open, open_existing, say, Failure};
use crate::config::TokenCommand;
use crate::evidence::rfc3339;
use crate::principals::{
    conflicting_roles, expiry, issue_token, operator_change, rotate_token, PrincipalOut,
};

/// `eucora token …`: principals, changed as the operator running it (`cli:<login>`), each change
/// an event of the principal's stream.
pub async fn run(command: TokenCommand) -> Result<(), Failure> {
    match command {
        TokenCommand::Create(args) => {
            let change = operator_change(args.by.as_deref())?;
            let role = Role::parse(&args.role).ok_or_else(|| {
                format!(
                    "unknown role {:?}: use requester, cab_approver, deployer, auditor, admin or connector",
                    args.role
                )
            })?;
            let subject = args.subject.trim();
            crate::principals::check_subject(subject, role)?;
            let expires_at =
                expiry(change.at, args.expires_in).map_err(|e| format!("--expires-in: {e}"))?;
            let reason = match args.allow_conflict.as_deref().map(str::trim) {
                Some(r)
                    if r.is_empty()
                        || r.chars().count() > 4096
                        || r.chars().any(char::is_control) =>
                {
                    return Err(
                        "--allow-conflict needs a reason: 1 to 4096 printable characters".into(),
                    )
                }
                reason => reason,
            };
            let store = if args.init {
                open(&args.db).await?
            } else {
                open_existing(&args.db).await.map_err(|e| {
                    format!("{e}; a new installation's first token: `eucora token create --init`")
                })?
            };
            let held = conflicting_roles(&store, subject, role, change.at)
                .await
                .map_err(|e| e.to_string())?;
            if !held.is_empty() && reason.is_none() {
                let held: Vec<&str> = held.iter().map(|r| r.as_str()).collect();
                return Err(format!(
                    "{subject} already holds {} and may not also be {}: who requests a change \
                     must not decide it. Give the role to another subject, or pass \
                     --allow-conflict REASON to grant it anyway (the reason is recorded)",
                    held.join(", "),
                    role.as_str()
                )
                .into());
            }
            // A reason is recorded only where there is a conflict to explain.
            let reason = reason.filter(|_| !held.is_empty());
            let (id, token) = issue_token(&store, subject, role, expires_at, &change, reason)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "principal {id} ({subject}, {}) expires {}",
                role.as_str(),
                rfc3339(expires_at)
            );
            say(format_args!("{token}"))
        }
        TokenCommand::List(args) => {
            let store = open_existing(&args.db).await?;
            let principals = store.principals().await.map_err(|e| e.to_string())?;
            let grantors = store
                .principal_grantors()
                .await
                .map_err(|e| e.to_string())?;
            let now = chrono::Utc::now();
            let shown: Vec<PrincipalOut> = principals
                .into_iter()
                .map(|p| PrincipalOut::new(p, now, &grantors))
                .collect();
            if args.json {
                for p in &shown {
                    let line = serde_json::to_string(p).map_err(|e| e.to_string())?;
                    say(format_args!("{line}"))?;
                }
                return Ok(());
            }
            let time = |t: &chrono::DateTime<chrono::Utc>| rfc3339(*t);
            let rows: Vec<Vec<String>> = shown
                .iter()
                .map(|p| {
                    vec![
                        p.id.to_string(),
                        p.subject.clone(),
                        p.role.as_str().into(),
                        p.state.into(),
                        time(&p.created_at),
                        p.revoked_at
                            .as_ref()
                            .map_or_else(|| time(&p.expires_at), |_| "-".into()),
                        p.granted_by.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            for line in super::table::render(
                &[
                    "ID",
                    "SUBJECT",
                    "ROLE",
                    "STATE",
                    "CREATED",
                    "EXPIRES",
                    "GRANTED BY",
                ],
                &rows,
            ) {
                say(format_args!("{line}"))?;
            }
            Ok(())
        }
        TokenCommand::Revoke(args) => {
            let change = operator_change(args.by.as_deref())?;
            let store = open_existing(&args.db).await?;
            let record = store
                .revoke_principal(args.id, &change)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            eprintln!(
                "principal {} ({}) revoked at {}",
                record.id,
                record.subject,
                record.revoked_at.unwrap_or(change.at)
            );
            Ok(())
        }
        TokenCommand::Rotate(args) => {
            let change = operator_change(args.by.as_deref())?;
            let expires_at =
                expiry(change.at, args.expires_in).map_err(|e| format!("--expires-in: {e}"))?;
            let store = open_existing(&args.db).await?;
            let (record, token) = rotate_token(&store, args.id, expires_at, &change)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            eprintln!(
                "principal {} ({}) has a new token, expiring {}; the old one no longer works",
                record.id,
                record.subject,
                rfc3339(expires_at)
            );
            say(format_args!("{token}"))
        }
    }
}
