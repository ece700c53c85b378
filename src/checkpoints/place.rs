//! Where the checkpoints kept outside the database live, and how they are written.
//!
//! The default is the server's own state directory, not the database's: on SQLite, whoever can
//! write the database file can write the directory it sits in (SQLite needs that for its
//! journal), and so could delete or roll back a checkpoint directory beside it. The default is
//! `$XDG_STATE_HOME/eucora/checkpoints/<database>` (else `~/.local/state/…`), one directory per
//! database, named by the first 16 hex digits of the SHA-256 of its identity: the SQLite file's
//! absolute path, or PostgreSQL's host, port and database name. Directories are made 0700 and
//! files written 0600, each replaced atomically (a temporary file, then a rename).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::store::{backend_of, sqlite_file, Backend};

/// The file a checkpoint directory keeps the latest checkpoint in.
pub const LATEST: &str = "checkpoint";
/// The file that names the database a default directory belongs to.
const DATABASE: &str = "database";
/// The file that keeps the latest checkpoint with the witness's answer to it.
pub const WITNESSED: &str = "checkpoint.witnessed";

/// What identifies a database across restarts, with no secret in it.
fn identity(database_url: &str) -> Option<String> {
    match backend_of(database_url) {
        Backend::Sqlite => {
            let file = sqlite_file(database_url)?;
            let path = std::path::absolute(file).ok()?;
            Some(format!("sqlite:{}", path.display()))
        }
        Backend::Postgres => {
            use std::str::FromStr;
            let options = sqlx::postgres::PgConnectOptions::from_str(database_url).ok()?;
            Some(format!(
                "postgres://{}:{}/{}",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or_default()
            ))
        }
    }
}

/// The state directory of this user: `$XDG_STATE_HOME`, else `$HOME/.local/state`.
fn state_home(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let absolute = |v: String| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    env("XDG_STATE_HOME").and_then(absolute).or_else(|| {
        env("HOME")
            .and_then(absolute)
            .map(|h| h.join(".local/state"))
    })
}

/// The default checkpoint directory of the database `database_url` names, and what it names
/// the database as; `None` with no state directory (no `HOME`) or an in-memory database.
pub fn default_dir(
    database_url: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(PathBuf, String)> {
    let identity = identity(database_url)?;
    let digest = crate::principals::sha256_hex(identity.as_bytes());
    let dir = state_home(env)?
        .join("eucora/checkpoints")
        .join(&digest[..16]);
    Some((dir, identity))
}

/// Makes `dir` (and its missing parents) owner-only, and names its database in it.
pub fn prepare(dir: &Path, identity: Option<&str>) -> Result<(), String> {
    let failed = |e: std::io::Error| {
        format!(
            "cannot prepare the checkpoint directory {}: {e}",
            dir.display()
        )
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
    if let Some(identity) = identity {
        write_private(dir, DATABASE, &format!("{identity}\n"))?;
    }
    Ok(())
}

/// The checkpoint an earlier version kept beside the SQLite database (`<file>.checkpoints`),
/// copied into `dir` when `dir` keeps none yet: the anchor carries over to the new place.
pub fn carry_over(database_url: &str, dir: &Path) -> Result<Option<PathBuf>, String> {
    let Some(file) = sqlite_file(database_url) else {
        return Ok(None);
    };
    let old = PathBuf::from(format!("{file}.checkpoints")).join(LATEST);
    if dir.join(LATEST).exists() || !old.exists() {
        return Ok(None);
    }
    let note = std::fs::read_to_string(&old)
        .map_err(|e| format!("cannot read {}: {e}", crate::domain::absolute(&old)))?;
    write_private(dir, LATEST, &note)?;
    Ok(Some(old))
}

/// Replaces `dir/name` atomically with `text`, readable and writable by the owner only.
pub fn write_private(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    let failed = |e: std::io::Error| {
        format!(
            "cannot write to the checkpoint directory {}: {e}",
            dir.display()
        )
    };
    if !dir.exists() {
        prepare(dir, None)?;
    }
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(failed)?;
    // A file left by an earlier version may be wider open: the mode applies to new files only.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&temporary, dir.join(name)).map_err(failed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_default_is_the_users_state_directory_one_per_database() {
        let home = env(&[("HOME", "/home/op")]);
        let (a, id) = default_dir("sqlite:///srv/a.db", &home).unwrap();
        assert!(
            a.starts_with("/home/op/.local/state/eucora/checkpoints"),
            "{a:?}"
        );
        assert_eq!(id, "sqlite:/srv/a.db");
        let (b, _) = default_dir("sqlite:///srv/b.db", &home).unwrap();
        assert_ne!(a, b, "two databases, two directories");
        let xdg = env(&[("HOME", "/home/op"), ("XDG_STATE_HOME", "/var/lib/op")]);
        assert!(default_dir("sqlite:///srv/a.db", &xdg)
            .unwrap()
            .0
            .starts_with("/var/lib/op/eucora/checkpoints"));
        // PostgreSQL: named without the password, which does not change the directory.
        let (p, id) = default_dir("postgres://svc:s3cret@db.example:5433/eucora", &home).unwrap();
        assert_eq!(id, "postgres://db.example:5433/eucora");
        let (q, _) = default_dir("postgres://svc:other@db.example:5433/eucora", &home).unwrap();
        assert_eq!(p, q);
        // No state directory, or nothing to keep it for.
        assert!(default_dir("sqlite:///srv/a.db", &env(&[])).is_none());
        assert!(default_dir("sqlite::memory:", &home).is_none());
        assert!(default_dir("sqlite:///srv/a.db", &env(&[("HOME", "relative")])).is_none());
    }

    #[test]
    fn directories_are_owner_only_and_files_private() {
        let root = std::env::temp_dir().join(format!("eucora-place-{}", uuid::Uuid::new_v4()));
        let dir = root.join("eucora/checkpoints/abc");
        prepare(&dir, Some("sqlite:/srv/a.db")).unwrap();
        write_private(&dir, LATEST, "note\n").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(LATEST)), 0o600);
        assert_eq!(mode(&dir.join(DATABASE)), 0o600);
        // A directory and file made wider by hand are narrowed again at the next write.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&dir, None).unwrap();
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(dir.join(LATEST), std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&dir, LATEST, "newer\n").unwrap();
        assert_eq!(mode(&dir.join(LATEST)), 0o600);
        assert_eq!(
            std::fs::read_to_string(dir.join(LATEST)).unwrap(),
            "newer\n"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
