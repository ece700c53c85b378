//! How the OpenAPI document names the domain's value types. The domain's enums live in the
//! read-side crate, which knows nothing of OpenAPI; these mirror them for the document only, and
//! a test holds each mirror to the domain's own names.

use serde::Serialize;
use utoipa::ToSchema;

/// A rollout ring, in promotion order.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schema(as = Ring)]
#[allow(dead_code)]
pub enum RingName {
    Lab,
    Canary,
    Pilot,
    Department,
    Global,
}

/// A deployment intent's lifecycle state.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Status)]
#[allow(dead_code)]
pub enum StatusName {
    AwaitingCab,
    Approved,
    Deployed,
    Completed,
    Rejected,
    RolledBack,
}

/// The connector that installs the intent: `intune`, `jamf`, `sccm`, `landscape`, `ansible`, or
/// the name of a custom connector configured on the server (`[connectors.NAME]`,
/// `type = "custom"`).
pub struct ConnectorName;

impl utoipa::PartialSchema for ConnectorName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "intune, jamf, sccm, landscape, ansible, or a custom connector configured on the server",
            ))
            .pattern(Some("^[a-z][a-z0-9_-]{0,31}$"))
            .min_length(Some(1))
            .max_length(Some(32))
            .examples(["intune"])
            .into()
    }
}

impl utoipa::ToSchema for ConnectorName {
    fn name() -> std::borrow::Cow<'static, str> {
        "ConnectorType".into()
    }
}

/// The kind of change.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ChangeType)]
#[allow(dead_code)]
pub enum ChangeTypeName {
    Standard,
    Normal,
    Emergency,
}

/// How the devices are connected.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = SiteClass)]
#[allow(dead_code)]
pub enum SiteClassName {
    Online,
    Intermittent,
    AirGapped,
}

/// Where an emergency change's retrospective CAB approval stands (a list filter).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = RetroApproval)]
#[allow(dead_code)]
pub enum RetroApprovalName {
    /// Awaited, overdue or not.
    Pending,
    /// Awaited past its due time.
    Overdue,
}

#[cfg(test)]
mod tests {
    use super::*;
    use eucora_projections::event::{ChangeType, ConnectorType, Ring, SiteClass, Status};

    fn names<T: Serialize>(values: &[T]) -> Vec<String> {
        values
            .iter()
            .map(|v| {
                serde_json::to_value(v)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn the_documented_names_are_the_domains() {
        use ChangeTypeName as C;
        use RingName as R;
        use SiteClassName as S;
        use StatusName as T;
        assert_eq!(
            names(&[R::Lab, R::Canary, R::Pilot, R::Department, R::Global]),
            names(&Ring::ALL)
        );
        assert_eq!(
            names(&[
                T::AwaitingCab,
                T::Approved,
                T::Deployed,
                T::Completed,
                T::Rejected,
                T::RolledBack
            ]),
            names(&Status::ALL)
        );
        for builtin in ConnectorType::ALL {
            assert!(ConnectorType::is_name(builtin.as_str()), "{builtin:?}");
        }
        assert_eq!(
            names(&[C::Standard, C::Normal, C::Emergency]),
            names(&[
                ChangeType::Standard,
                ChangeType::Normal,
                ChangeType::Emergency
            ])
        );
        assert_eq!(
            names(&[RetroApprovalName::Pending, RetroApprovalName::Overdue]),
            ["pending", "overdue"].map(|n| crate::store::RetroApproval::parse(n)
                .unwrap()
                .as_str()
                .to_string())
        );
        assert_eq!(
            names(&[S::Online, S::Intermittent, S::AirGapped]),
            names(&[
                SiteClass::Online,
                SiteClass::Intermittent,
                SiteClass::AirGapped
            ])
        );
    }
}
