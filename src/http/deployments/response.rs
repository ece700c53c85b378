//! The intent as the API answers it.

use chrono::{DateTime, Utc};
use eucora_projections::event::{ChangeType, ConnectorType, Ring, SiteClass, Status};
use eucora_projections::intent::{DispatchOutcome, IntentState, PromotionAttempt};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::schema::{ChangeTypeName, ConnectorName, RingName, SiteClassName, StatusName};

/// A deployment intent as it now stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntentResponse {
    pub id: Uuid,
    pub correlation_id: String,
    pub app_name: String,
    pub version: String,
    #[schema(value_type = ConnectorName)]
    pub connector_type: ConnectorType,
    #[schema(value_type = ChangeTypeName)]
    pub change_type: ChangeType,
    #[schema(value_type = SiteClassName)]
    pub site_class: SiteClass,
    #[schema(value_type = StatusName)]
    pub status: Status,
    #[schema(value_type = RingName)]
    pub current_ring: Ring,
    #[schema(value_type = RingName)]
    pub target_ring: Ring,
    pub risk_score: u32,
    pub risk_model_version: String,
    pub requires_cab: bool,
    /// Why the CAB must decide (the risk score above its threshold, privileged tooling, critical
    /// infrastructure); absent when it need not.
    pub cab_required_reason: Option<String>,
    /// The change's reference in another system, if the requester gave one.
    pub change_ref: Option<String>,
    pub retro_approval_pending: bool,
    /// When the retrospective approval of an emergency change falls due (from its first
    /// deployment); absent for every other intent.
    pub retro_approval_due_at: Option<DateTime<Utc>>,
    /// The retrospective approval was not given by its due time.
    pub retro_approval_overdue: bool,
    /// The CAB rejected this emergency change retrospectively: it must be rolled back, and may
    /// not be reported on or promoted.
    pub rollback_required: bool,
    pub rollback_validated: bool,
    pub requested_by: String,
    pub approved_by: Option<String>,
    /// Who rejected it (the CAB, on the request or in its retrospective review); null otherwise.
    pub rejected_by: Option<String>,
    /// The rejection's reason; null without a rejection.
    pub rejection_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub stream_version: u64,
    /// The latest promotion attempt with every gate's threshold, measured value and verdict.
    #[schema(value_type = Option<Object>)]
    pub last_promotion: Option<PromotionAttempt>,
    /// What the intent's connector was asked and how it answered, by idempotency key
    /// (`<id>:<RING>:<action>`): `dispatched` (accepted) or `failed` (refused for good; the
    /// `ConnectorDispatchFailed` event says why). Empty when nothing was dispatched.
    pub connector_actions: std::collections::BTreeMap<String, String>,
    /// The connector's last status answer that could not be taken as a rollout result (the
    /// `ConnectorStatusRejected` event), until a rollout report in its ring supersedes it;
    /// absent when there is none.
    pub connector_status_rejected: Option<StatusRejectedResponse>,
    /// What the change cost so far, with the rates recorded at its request (docs/observability.md,
    /// "Cost"); absent for an intent requested before costs were recorded.
    pub cost: Option<CostResponse>,
    /// When the rollout in its current ring is expected to reach the ring's success threshold,
    /// from its reports, against its deadline (docs/observability.md, "Forecasts"); absent
    /// before the ring's first report and once the intent has ended.
    pub forecast: Option<ForecastResponse>,
    /// On a command's answer: the global position of the intent's last event, as the
    /// `EUCORA-Index` header says; give it as `min_index` to a read that must reflect the
    /// command (docs/api.md, "Fresh reads"). Absent on reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<i64>,
}

/// A rollout's compliance forecast, as of its latest report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastResponse {
    #[schema(value_type = RingName)]
    pub ring: Ring,
    /// The ring's success threshold in force at the report.
    pub threshold: f64,
    /// The latest report's success share.
    pub share: f64,
    /// The latest report's time.
    pub as_of: DateTime<Utc>,
    /// When the ring must be compliant by; absent for reports recorded before deadlines were.
    pub due_at: Option<DateTime<Utc>>,
    /// The threshold was reached (at `expected_compliance_at`).
    pub compliant: bool,
    /// When it was reached, or is expected to be at the install rate so far; absent when the
    /// rollout gains nothing.
    pub expected_compliance_at: Option<DateTime<Utc>>,
    /// It reached, or is expected to reach, the threshold after `due_at`, or never.
    pub will_miss_deadline: bool,
}

/// A change's cost so far, in its currency's units.
#[derive(Debug, Serialize, ToSchema)]
pub struct CostResponse {
    /// ISO 4217 code.
    pub currency: String,
    pub total: f64,
    /// By component: `device_installs`, `delivery`, `connector_calls`, `incidents`,
    /// `cab_review`, `rollback` (those with a cost).
    pub components: std::collections::BTreeMap<String, f64>,
    /// By ring, then component.
    pub by_ring: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
}

/// A connector status answer that was rejected.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusRejectedResponse {
    #[schema(value_type = RingName)]
    pub ring: Ring,
    pub assignment_id: String,
    /// What was wrong with the answer.
    pub problem: String,
    pub at: DateTime<Utc>,
}

impl From<&IntentState> for IntentResponse {
    fn from(s: &IntentState) -> Self {
        IntentResponse {
            id: s.id,
            correlation_id: s.correlation_id.clone(),
            app_name: s.app_name.clone(),
            version: s.version.clone(),
            connector_type: s.connector_type,
            change_type: s.change_type,
            site_class: s.site_class,
            status: s.status,
            current_ring: s.current_ring,
            target_ring: s.target_ring,
            risk_score: s.risk_score,
            risk_model_version: s.risk_model_version.clone(),
            requires_cab: s.requires_cab,
            cab_required_reason: s.cab_reason(),
            change_ref: s.change_ref.clone(),
            retro_approval_pending: s.retro_approval_pending,
            retro_approval_due_at: s.retro_approval_due_at,
            retro_approval_overdue: s.retro_approval_overdue,
            rollback_required: s.rollback_required,
            rollback_validated: s.rollback_validated,
            requested_by: s.requested_by.clone(),
            approved_by: s.approved_by.clone(),
            rejected_by: s.rejected_by.clone(),
            rejection_reason: s.rejection_reason.clone(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            stream_version: s.stream_version,
            last_promotion: s.last_promotion.clone(),
            connector_actions: s
                .connector_actions
                .iter()
                .map(|(key, outcome)| {
                    let outcome = match outcome {
                        DispatchOutcome::Dispatched => "dispatched",
                        DispatchOutcome::Failed => "failed",
                    };
                    (key.clone(), outcome.to_string())
                })
                .collect(),
            cost: s.cost.currency().map(|currency| CostResponse {
                currency: currency.to_string(),
                total: s.cost.total(),
                components: s
                    .cost
                    .components()
                    .into_iter()
                    .map(|(c, amount)| (c.as_str().to_string(), amount))
                    .collect(),
                by_ring: s
                    .cost
                    .by_ring()
                    .into_iter()
                    .map(|(ring, components)| {
                        let components = components
                            .into_iter()
                            .map(|(c, amount)| (c.as_str().to_string(), amount))
                            .collect();
                        (ring.as_str().to_string(), components)
                    })
                    .collect(),
            }),
            index: None,
            forecast: s.forecast.current().map(|f| ForecastResponse {
                ring: f.ring,
                threshold: f.threshold,
                share: f.share,
                as_of: f.as_of,
                due_at: f.due_at,
                compliant: f.compliant,
                expected_compliance_at: f.expected_at,
                will_miss_deadline: f.will_miss_deadline,
            }),
            connector_status_rejected: s.status_rejected.as_ref().map(|r| StatusRejectedResponse {
                ring: r.ring,
                assignment_id: r.assignment_id.clone(),
                problem: r.problem.clone(),
                at: r.at,
            }),
        }
    }
}
