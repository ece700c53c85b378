//! The connectors file (`eucora serve --connectors`): one table per connector, with its
//! endpoint, credential, timeouts, retries, breaker, write limits, polling and call bound.

use std::collections::BTreeMap;
use std::time::Duration;

use eucora_projections::event::ConnectorType;
use serde::Deserialize;

/// A credential: kept in memory only, never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The credential itself, to send: never to print or log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// One connector's table of the `--connectors` file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub base_url: reqwest::Url,
    pub credential: Option<Secret>,
    /// For each call.
    pub timeout: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Calls a retrying call (`publish`, `status`) makes before it gives up on a transient
    /// error; the dispatcher calls once and retries from the outbox instead.
    pub retry_attempts: usize,
    pub breaker_failures: u32,
    pub breaker_open: Duration,
    /// Writes allowed per app in a window, when limited.
    pub writes_per_app: Option<(u32, Duration)>,
    /// Writes allowed to the connector as a whole in a window, when limited.
    pub writes_per_tenant: Option<(u32, Duration)>,
    /// How often the status of its active assignments is read and reported.
    pub poll_interval: Duration,
    /// How often what it reports is compared with what was installed (drift).
    pub reconcile_interval: Duration,
    /// Calls to it in flight at once, from one server: sends, status reads and remediations
    /// together.
    pub max_in_flight: usize,
    /// How its results come back: read by polling, or pushed by the connector.
    pub mode: Mode,
    /// It answers `GET /v1/assignments?ids=…` (many statuses in one call): polling uses it.
    pub batch_status: bool,
}

/// How a connector's results come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// EUCORA reads each active assignment's status every `poll_interval`.
    Poll,
    /// The connector pushes them (`POST /api/v1/connectors/{name}/results`); nothing is polled.
    Push,
}

/// A table as written; durations like `10s`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    base_url: String,
    token_file: Option<std::path::PathBuf>,
    token_env: Option<String>,
    #[serde(default = "defaults::timeout")]
    timeout: String,
    #[serde(default = "defaults::retry_min")]
    retry_min: String,
    #[serde(default = "defaults::retry_max")]
    retry_max: String,
    #[serde(default = "defaults::retry_attempts")]
    retry_attempts: usize,
    #[serde(default = "defaults::breaker_failures")]
    breaker_failures: u32,
    #[serde(default = "defaults::breaker_open")]
    breaker_open: String,
    /// `N/DURATION` (`100/20s`) or `unlimited`; Intune's published limits by default.
    writes_per_app: Option<String>,
    writes_per_tenant: Option<String>,
    #[serde(default = "defaults::poll_interval")]
    poll_interval: String,
    #[serde(default = "defaults::reconcile_interval")]
    reconcile_interval: String,
    #[serde(default = "defaults::max_in_flight")]
    max_in_flight: usize,
    #[serde(default = "defaults::mode")]
    mode: Mode,
    #[serde(default)]
    batch_status: bool,
    /// `[connectors.NAME]`'s type: a built-in type, or `custom`.
    #[serde(rename = "type")]
    kind: Option<String>,
}

mod defaults {
    pub fn timeout() -> String {
        "10s".into()
    }
    pub fn retry_min() -> String {
        "2s".into()
    }
    pub fn retry_max() -> String {
        "60s".into()
    }
    pub fn retry_attempts() -> usize {
        8
    }
    pub fn breaker_failures() -> u32 {
        5
    }
    pub fn breaker_open() -> String {
        "60s".into()
    }
    pub fn poll_interval() -> String {
        "5s".into()
    }
    pub fn reconcile_interval() -> String {
        "60s".into()
    }
    pub fn max_in_flight() -> usize {
        16
    }
    pub fn mode() -> super::Mode {
        super::Mode::Poll
    }
}

/// Reads the `--connectors` file: one table per connector type (`[intune]`, `[jamf]`, `[sccm]`,
/// `[landscape]`, `[ansible]`). Errors name the table and the key, never a credential.
pub fn load(path: &std::path::Path) -> Result<BTreeMap<ConnectorType, Settings>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the connectors file {}: {e}",
            crate::domain::absolute(path)
        )
    })?;
    parse(&text, &|name| std::env::var(name).ok()).map_err(|e| format!("{}: {e}", path.display()))
}

/// [`load`] of a text, with the environment given.
pub fn parse(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<ConnectorType, Settings>, String> {
    let mut file: BTreeMap<String, toml::Value> =
        toml::from_str(text).map_err(|e| format!("not a connectors file: {}", e.message()))?;
    let named = file.remove("connectors");
    let table = |path: &str, value: toml::Value| {
        value
            .try_into::<Table>()
            .map_err(|e| format!("[{path}]: {}", e.message()))
    };
    // Each table: its connector, its path in the file (for messages), its settings.
    let mut found: Vec<(ConnectorType, String, Table)> = Vec::new();
    // `[intune]`, …: a table named by its built-in type.
    for (name, value) in file {
        let kind = ConnectorType::builtin(&name).ok_or_else(|| {
            format!(
                "[{name}] is not a connector type (intune, jamf, sccm, landscape, ansible); a \
                 connector of another kind is [connectors.{name}] with type = \"custom\""
            )
        })?;
        let t = table(&name, value)?;
        if t.kind.as_deref().is_some_and(|k| k != name) {
            return Err(format!("[{name}] type: a [{name}] table is of type {name}"));
        }
        found.push((kind, name, t));
    }
    // `[connectors.NAME]` with a `type`: a built-in type, or `custom` (its own name its label).
    if let Some(named) = named {
        let toml::Value::Table(named) = named else {
            return Err("connectors: give one [connectors.NAME] table per connector".into());
        };
        for (name, value) in named {
            let path = format!("connectors.{name}");
            let t = table(&path, value)?;
            let kind = match t.kind.as_deref() {
                None => {
                    return Err(format!(
                        "[{path}] type: give one of intune, jamf, sccm, landscape, ansible or custom"
                    ))
                }
                Some("custom") if ConnectorType::builtin(&name).is_some() => {
                    return Err(format!(
                        "[{path}]: {name} is a built-in type; give a custom connector a name of its own"
                    ))
                }
                Some("custom") => ConnectorType::parse(&name).ok_or_else(|| {
                    format!(
                        "[{path}]: a custom connector's name is 1 to 32 lower-case letters, \
                         digits, - and _, from a letter"
                    )
                })?,
                Some(other) => ConnectorType::builtin(other).ok_or_else(|| {
                    format!(
                        "[{path}] type: {other:?} is not intune, jamf, sccm, landscape, ansible or custom"
                    )
                })?,
            };
            found.push((kind, path, t));
        }
    }
    let mut out = BTreeMap::new();
    for (kind, name, table) in found {
        if out.contains_key(&kind) {
            return Err(format!(
                "[{name}]: the {} connector is configured twice",
                kind.as_str()
            ));
        }
        let duration = |key: &str, text: &str| {
            crate::domain::policy::duration(text)
                .and_then(|d| d.to_std().ok())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("[{name}] {key}: {text:?} is not a duration like \"10s\""))
        };
        let base_url = reqwest::Url::parse(&table.base_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                format!(
                    "[{name}] base_url: {:?} is not an http(s) URL",
                    table.base_url
                )
            })?;
        if !base_url.username().is_empty() || base_url.password().is_some() {
            return Err(format!(
                "[{name}] base_url: put credentials in token_file or token_env, not in the URL"
            ));
        }
        let credential = match (&table.token_file, &table.token_env) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "[{name}] token_file and token_env: give one, not both"
                ))
            }
            (Some(file), None) => Some(Secret(
                std::fs::read_to_string(file)
                    .map_err(|e| format!("[{name}] token_file {}: {e}", file.display()))?
                    .trim()
                    .to_string(),
            )),
            (None, Some(var)) => {
                Some(Secret(env(var).ok_or_else(|| {
                    format!("[{name}] token_env: {var} is not set")
                })?))
            }
            (None, None) => None,
        };
        if credential.as_ref().is_some_and(|c| c.0.is_empty()) {
            return Err(format!("[{name}] the credential is empty"));
        }
        let limit = |key: &str, given: &Option<String>, intune: &str| {
            let text = match (given.as_deref(), kind) {
                (Some("unlimited"), _) => return Ok(None),
                (Some(text), _) => text,
                (None, ConnectorType::Intune) => intune,
                (None, _) => return Ok(None),
            };
            text.split_once('/')
                .and_then(|(n, window)| {
                    let n: u32 = n.trim().parse().ok().filter(|n| (1..=1_000_000).contains(n))?;
                    let window = crate::domain::policy::duration(window)?.to_std().ok()?;
                    (!window.is_zero()).then_some((n, window))
                })
                .map(Some)
                .ok_or_else(|| {
                    format!("[{name}] {key}: {text:?} is not N/DURATION (like \"100/20s\") or \"unlimited\"")
                })
        };
        let settings = Settings {
            base_url,
            credential,
            timeout: duration("timeout", &table.timeout)?,
            retry_min: duration("retry_min", &table.retry_min)?,
            retry_max: duration("retry_max", &table.retry_max)?,
            retry_attempts: table.retry_attempts.clamp(1, 100),
            breaker_failures: table.breaker_failures.max(1),
            breaker_open: duration("breaker_open", &table.breaker_open)?,
            writes_per_app: limit("writes_per_app", &table.writes_per_app, "100/20s")?,
            writes_per_tenant: limit("writes_per_tenant", &table.writes_per_tenant, "200/20s")?,
            poll_interval: duration("poll_interval", &table.poll_interval)?,
            reconcile_interval: duration("reconcile_interval", &table.reconcile_interval)?,
            max_in_flight: Some(table.max_in_flight)
                .filter(|n| (1..=MAX_IN_FLIGHT).contains(n))
                .ok_or_else(|| {
                    format!(
                        "[{name}] max_in_flight: {} is not from 1 to {MAX_IN_FLIGHT}",
                        table.max_in_flight
                    )
                })?,
            mode: table.mode,
            batch_status: table.batch_status,
        };
        if settings.retry_min > settings.retry_max {
            return Err(format!("[{name}] retry_min is longer than retry_max"));
        }
        out.insert(kind, settings);
    }
    Ok(out)
}

/// The most calls one server makes to one connector at once.
pub const MAX_IN_FLIGHT: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "INTUNE_TOKEN").then(|| "s3cret-token".to_string())
    }

    #[test]
    fn a_connectors_file_is_read_with_defaults_and_its_secret_is_never_printed() {
        let file = "[intune]\nbase_url = \"https://bridge.example/intune\"\ntoken_env = \"INTUNE_TOKEN\"\n\
                    [jamf]\nbase_url = \"http://127.0.0.1:9100\"\nretry_max = \"30s\"\n";
        let all = parse(file, &env).unwrap();
        let intune = &all[&ConnectorType::Intune];
        assert_eq!(
            (intune.timeout, intune.retry_min, intune.retry_max),
            (
                Duration::from_secs(10),
                Duration::from_secs(2),
                Duration::from_secs(60)
            )
        );
        assert_eq!(
            (intune.breaker_failures, intune.breaker_open),
            (5, Duration::from_secs(60))
        );
        // Intune's published write limits by default; none elsewhere unless written.
        assert_eq!(
            (intune.writes_per_app, intune.writes_per_tenant),
            (
                Some((100, Duration::from_secs(20))),
                Some((200, Duration::from_secs(20)))
            )
        );
        assert_eq!(all[&ConnectorType::Jamf].writes_per_app, None);
        assert_eq!(all[&ConnectorType::Jamf].retry_max, Duration::from_secs(30));
        assert_eq!(intune.max_in_flight, 16);
        let limited = parse(
            "[intune]\nbase_url = \"http://x\"\nwrites_per_app = \"unlimited\"\n\
             [ansible]\nbase_url = \"http://x\"\nwrites_per_tenant = \"10/1m\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(limited[&ConnectorType::Intune].writes_per_app, None);
        assert_eq!(
            limited[&ConnectorType::Ansible].writes_per_tenant,
            Some((10, Duration::from_secs(60)))
        );
        assert!(all[&ConnectorType::Jamf].credential.is_none());
        let printed = format!("{all:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("***"));
    }

    #[test]
    fn a_bad_connectors_file_is_refused_in_our_words() {
        for (file, says) in [
            ("[intunes]\nbase_url = \"http://x\"\n", "not a connector type"),
            ("[sccm]\nbase_url = \"ftp://x\"\n", "is not an http(s) URL"),
            ("[sccm]\nbase_url = \"http://u:p@x\"\n", "not in the URL"),
            ("[sccm]\nbase_url = \"http://x\"\nretries = 3\n", "unknown field"),
            ("[sccm]\nbase_url = \"http://x\"\ntimeout = \"soon\"\n", "timeout"),
            (
                "[sccm]\nbase_url = \"http://x\"\nmax_in_flight = 0\n",
                "max_in_flight: 0 is not from 1 to 256",
            ),
            (
                "[sccm]\nbase_url = \"http://x\"\nmax_in_flight = 1000\n",
                "max_in_flight: 1000 is not from 1 to 256",
            ),
            ("[sccm]\nbase_url = \"http://x\"\ntoken_env = \"NOPE\"\n", "NOPE is not set"),
            (
                "[sccm]\nbase_url = \"http://x\"\ntoken_env = \"INTUNE_TOKEN\"\ntoken_file = \"/x\"\n",
                "not both",
            ),
            ("[sccm]\nbase_url = \"http://x\"\nretry_min = \"2m\"\n", "retry_min is longer"),
            ("[sccm]\n", "base_url"),
            ("[sccm]\nbase_url = \"http://x\"\nwrites_per_app = \"100\"\n", "N/DURATION"),
            ("[sccm]\nbase_url = \"http://x\"\nwrites_per_app = \"0/20s\"\n", "N/DURATION"),
        ] {
            let refused = parse(file, &env).unwrap_err();
            assert!(refused.contains(says), "{file:?}: {refused}");
            assert!(!refused.contains("s3cret"), "{refused}");
        }
    }

    #[test]
    fn a_connector_of_its_own_kind_is_named_by_its_table() {
        let file = "[connectors.acme-mdm]\ntype = \"custom\"\nbase_url = \"http://acme\"\n\
                    [connectors.main]\ntype = \"intune\"\nbase_url = \"http://x\"\n\
                    [jamf]\nbase_url = \"http://y\"\n";
        let all = parse(file, &env).unwrap();
        let acme = ConnectorType::parse("acme-mdm").unwrap();
        assert!(!acme.is_builtin());
        assert_eq!(all[&acme].base_url.as_str(), "http://acme/");
        // No write limits unless written, as for every type but Intune.
        assert_eq!(all[&acme].writes_per_app, None);
        // A built-in type keeps its own name and its defaults, whatever its table is called.
        assert_eq!(
            all[&ConnectorType::Intune].writes_per_app,
            Some((100, Duration::from_secs(20)))
        );
        assert!(all.contains_key(&ConnectorType::Jamf));
        for (file, says) in [
            (
                "[connectors.acme]\nbase_url = \"http://x\"\n",
                "[connectors.acme] type: give one of",
            ),
            (
                "[connectors.intune]\ntype = \"custom\"\nbase_url = \"http://x\"\n",
                "intune is a built-in type",
            ),
            (
                "[connectors.Acme]\ntype = \"custom\"\nbase_url = \"http://x\"\n",
                "a custom connector's name is",
            ),
            (
                "[connectors.a]\ntype = \"mdm\"\nbase_url = \"http://x\"\n",
                "\"mdm\" is not intune",
            ),
            (
                "[intune]\nbase_url = \"http://x\"\n[connectors.b]\ntype = \"intune\"\nbase_url = \"http://x\"\n",
                "configured twice",
            ),
            (
                "[jamf]\ntype = \"custom\"\nbase_url = \"http://x\"\n",
                "is of type jamf",
            ),
            (
                "[connectors.acme]\ntype = \"custom\"\nbase_url = \"ftp://x\"\n",
                "[connectors.acme] base_url",
            ),
        ] {
            let refused = parse(file, &env).unwrap_err();
            assert!(refused.contains(says), "{file:?}: {refused}");
        }
    }
}
