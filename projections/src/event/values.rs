//! The value types events carry: rings, roles and actors, site classes, change and connector
//! types, the risk assessment, and the lifecycle states.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Rollout rings, in promotion order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Ring {
    Lab,
    Canary,
    Pilot,
    Department,
    Global,
}

impl Ring {
    pub const ALL: [Ring; 5] = [
        Ring::Lab,
        Ring::Canary,
        Ring::Pilot,
        Ring::Department,
        Ring::Global,
    ];

    /// The ring's number, in promotion order (LAB is 0).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The ring after this one, if any.
    pub fn next(self) -> Option<Ring> {
        Ring::ALL.get(self.index() + 1).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ring::Lab => "LAB",
            Ring::Canary => "CANARY",
            Ring::Pilot => "PILOT",
            Ring::Department => "DEPARTMENT",
            Ring::Global => "GLOBAL",
        }
    }

    pub fn parse(s: &str) -> Option<Ring> {
        Ring::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What a principal may do: request, decide as the CAB, deploy, audit, administer (docs/api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Requester,
    CabApprover,
    Deployer,
    Auditor,
    Admin,
    /// An execution plane's bridge: pushes its own rollout results
    /// (`POST /api/v1/connectors/{name}/results`, as subject `connector:<name>`), and its polled
    /// results are recorded in its name.
    Connector,
    /// The control plane itself, acting on a rule rather than a request (a deadline passing).
    /// No principal holds it: it is not in [`Role::ALL`], so no token can be made for it.
    System,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Requester,
        Role::CabApprover,
        Role::Deployer,
        Role::Auditor,
        Role::Admin,
        Role::Connector,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Requester => "requester",
            Role::CabApprover => "cab_approver",
            Role::Deployer => "deployer",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::Connector => "connector",
            Role::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Who made a change: an authenticated subject acting in one role, or the policy engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Actor {
    /// Who: a person or client (`alice`), the policy engine (`policy:…`), the control plane
    /// (`system:…`), a connector (`connector:<type>`), or an operator at the command line
    /// (`cli:<login>`).
    pub subject: String,
    /// The role it acted in.
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SiteClass {
    Online,
    Intermittent,
    AirGapped,
}

impl SiteClass {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteClass::Online => "online",
            SiteClass::Intermittent => "intermittent",
            SiteClass::AirGapped => "air_gapped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeType {
    Standard,
    Normal,
    Emergency,
}

impl ChangeType {
    /// The name the API and the stored events use.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Standard => "standard",
            ChangeType::Normal => "normal",
            ChangeType::Emergency => "emergency",
        }
    }
}

/// The connector an intent is dispatched through, by name: one of the five built-in types
/// (`intune`, `jamf`, `sccm`, `landscape`, `ansible`), or a custom connector's own name (a
/// connectors file's `[connectors.NAME]` with `type = "custom"`). The name is its label
/// everywhere: on events, in metrics, on the API.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectorType(pub(crate) &'static str);

#[allow(non_upper_case_globals)]
impl ConnectorType {
    pub const Intune: ConnectorType = ConnectorType("intune");
    pub const Jamf: ConnectorType = ConnectorType("jamf");
    pub const Sccm: ConnectorType = ConnectorType("sccm");
    pub const Landscape: ConnectorType = ConnectorType("landscape");
    pub const Ansible: ConnectorType = ConnectorType("ansible");
}

impl std::fmt::Debug for ConnectorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for ConnectorType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for ConnectorType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        ConnectorType::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{name:?} is not a connector name (intune, jamf, sccm, landscape, ansible, or a \
                 custom connector's: 1 to 32 lower-case letters, digits, - and _, from a letter)"
            ))
        })
    }
}

impl JsonSchema for ConnectorType {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ConnectorType".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "intune, jamf, sccm, landscape, ansible, or a custom connector's own name",
            "pattern": "^[a-z][a-z0-9_-]{0,31}$"
        })
    }
}

/// The label the risk model gives an assessment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ThresholdLabel {
    AutomatedAllowed,
    CabRequired,
    PrivilegedTooling,
}

impl ThresholdLabel {
    /// The label in words, for people.
    pub fn words(self) -> &'static str {
        match self {
            ThresholdLabel::AutomatedAllowed => "automated approval allowed",
            ThresholdLabel::CabRequired => "CAB required",
            ThresholdLabel::PrivilegedTooling => "privileged tooling",
        }
    }
}

/// One factor's part in a risk score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FactorAssessment {
    /// The factor's name (`privilege_impact`, …, `blast_radius`).
    pub factor: String,
    /// From 0 to 1.
    pub value: f64,
    /// Its weight in the model (the weights add up to 100).
    pub weight: f64,
    /// `value × weight`: its part of the score.
    pub contribution: f64,
}

/// A risk assessment as made at creation; a later model never rewrites it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RiskAssessment {
    /// The risk model that scored it (`risk_model_v1.0`).
    pub model_version: String,
    /// The weighted sum of the factors, rounded, from 0 to 100.
    pub score: u32,
    /// The model's label.
    pub threshold: ThresholdLabel,
    /// The CAB must decide (see `cab_required_reason`).
    pub requires_cab: bool,
    /// Every factor's value, weight and contribution, the derived `blast_radius` included.
    pub factors: Vec<FactorAssessment>,
    /// Why the CAB must decide, in words (`risk score 62 is above the CAB threshold 50`,
    /// `privileged tooling`, `critical infrastructure (policy cab.always_for_critical_infrastructure)`,
    /// joined by `; `); null when it need not, and on events written before version 3 of
    /// `DeploymentCreated`.
    pub cab_required_reason: Option<String>,
    /// The SHA-256 of the policy it was judged under (a `PolicyActivated` of the policy stream
    /// holds its text); null on events written before version 4 of `DeploymentCreated`.
    pub policy_digest: Option<String>,
}

/// The lifecycle states of an intent. `Completed`, `Rejected` and `RolledBack` are terminal.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    AwaitingCab,
    Approved,
    Deployed,
    Completed,
    Rejected,
    RolledBack,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::AwaitingCab,
        Status::Approved,
        Status::Deployed,
        Status::Completed,
        Status::Rejected,
        Status::RolledBack,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Rejected | Status::RolledBack
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::AwaitingCab => "awaiting_cab",
            Status::Approved => "approved",
            Status::Deployed => "deployed",
            Status::Completed => "completed",
            Status::Rejected => "rejected",
            Status::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The rates of the policy's `[cost]`, as recorded on the `DeploymentCreated` they price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CostRates {
    /// ISO 4217 code of the currency every rate is in (`EUR`).
    pub currency: String,
    /// Per device the version is installed on.
    pub per_device_install: f64,
    /// Per gigabyte (10⁹ bytes) of the artifact delivered to a device.
    pub per_gb_delivered: f64,
    /// Per call made to the connector (retries included).
    pub per_connector_call: f64,
    /// Per incident raised against the version.
    pub per_incident: f64,
    /// Per hour between the request and the CAB's decision.
    pub per_cab_review_hour: f64,
    /// Per rollback.
    pub per_rollback: f64,
}

impl Default for CostRates {
    /// Illustrative rates: set your own in the policy's `[cost]`.
    fn default() -> Self {
        CostRates {
            currency: "EUR".into(),
            per_device_install: 0.05,
            per_gb_delivered: 0.02,
            per_connector_call: 0.001,
            per_incident: 250.0,
            per_cab_review_hour: 80.0,
            per_rollback: 500.0,
        }
    }
}
