//! Risk model `risk_model_v1.0` (docs/rules.md): a weighted sum of eight factors, seven given by the
//! requester and `blast_radius` derived from the highest ring the intent targets.

use eucora_projections::event::{FactorAssessment, Ring, RiskAssessment, ThresholdLabel};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::policy::CabPolicy;
use super::DomainError;

pub const MODEL_VERSION: &str = "risk_model_v1.0";
/// Scores above this need CAB approval.
pub const CAB_THRESHOLD: u32 = 50;
/// The seven factors a requester gives, by their names in the API (the fields of
/// [`RiskFactors`]).
pub const FACTOR_NAMES: [&str; 7] = [
    "privilege_impact",
    "supply_chain_trust",
    "exploitability",
    "data_access",
    "sbom_vulnerability",
    "operational_complexity",
    "history",
];

/// The seven requester-given factors, each in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RiskFactors {
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub privilege_impact: f64,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub supply_chain_trust: f64,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub exploitability: f64,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub data_access: f64,
    /// Below 1: 1.0 means a Critical vulnerability without exception, and creation is refused.
    #[schema(minimum = 0.0, exclusive_maximum = 1.0)]
    pub sbom_vulnerability: f64,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub operational_complexity: f64,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub history: f64,
}

impl RiskFactors {
    /// Reads the factors from a JSON object only: serde's derived reader would also take an
    /// array of seven numbers by position, which no client means.
    pub fn object_only<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RiskFactors, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = RiskFactors;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of the seven risk factors")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RiskFactors, A::Error> {
                RiskFactors::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object)
    }
}

/// The blast radius of the highest ring an intent targets, before the critical-infrastructure factor.
pub fn blast_radius(target: Ring, critical_infrastructure: bool) -> f64 {
    let base = match target {
        Ring::Lab => 0.1,
        Ring::Canary => 0.3,
        Ring::Pilot => 0.5,
        Ring::Department => 0.7,
        Ring::Global => 1.0,
    };
    if critical_infrastructure {
        f64::min(base * 1.2, 1.0)
    } else {
        base
    }
}

/// Scores an intent, and decides whether the CAB must approve it: a score above
/// [`CAB_THRESHOLD`], privileged tooling, or (under `cab.always_for_critical_infrastructure`)
/// critical infrastructure; the assessment records why. Refuses values outside [0, 1] and a
/// Critical SBOM finding.
pub fn assess(
    factors: &RiskFactors,
    target: Ring,
    critical_infrastructure: bool,
    privileged_tooling: bool,
    cab: &CabPolicy,
) -> Result<RiskAssessment, DomainError> {
    let given = [
        ("privilege_impact", factors.privilege_impact, 20.0),
        ("supply_chain_trust", factors.supply_chain_trust, 15.0),
        ("exploitability", factors.exploitability, 10.0),
        ("data_access", factors.data_access, 10.0),
        ("sbom_vulnerability", factors.sbom_vulnerability, 15.0),
        (
            "operational_complexity",
            factors.operational_complexity,
            10.0,
        ),
        ("history", factors.history, 10.0),
    ];
    for (name, value, _) in given {
        if !(0.0..=1.0).contains(&value) {
            return Err(DomainError::invalid(
                &format!("risk_factors.{name}"),
                "must be a number from 0 to 1",
            ));
        }
    }
    if factors.sbom_vulnerability >= 1.0 {
        return Err(DomainError::CriticalVulnerability);
    }
    let mut all: Vec<(&str, f64, f64)> = given.to_vec();
    all.insert(
        5,
        (
            "blast_radius",
            blast_radius(target, critical_infrastructure),
            10.0,
        ),
    );
    let factors: Vec<FactorAssessment> = all
        .into_iter()
        .map(|(name, value, weight)| FactorAssessment {
            factor: name.to_string(),
            value,
            weight,
            contribution: value * weight,
        })
        .collect();
    let total: f64 = factors.iter().map(|f| f.contribution).sum();
    let score = total.round().clamp(0.0, 100.0) as u32;
    let threshold = if privileged_tooling {
        ThresholdLabel::PrivilegedTooling
    } else if score > CAB_THRESHOLD {
        ThresholdLabel::CabRequired
    } else {
        ThresholdLabel::AutomatedAllowed
    };
    let mut reasons = Vec::new();
    if score > CAB_THRESHOLD {
        reasons.push(format!(
            "risk score {score} is above the CAB threshold {CAB_THRESHOLD}"
        ));
    }
    if privileged_tooling {
        reasons.push("privileged tooling".to_string());
    }
    if critical_infrastructure && cab.always_for_critical_infrastructure {
        reasons.push(
            "critical infrastructure (policy cab.always_for_critical_infrastructure)".to_string(),
        );
    }
    let threshold = if threshold == ThresholdLabel::AutomatedAllowed && !reasons.is_empty() {
        ThresholdLabel::CabRequired
    } else {
        threshold
    };
    Ok(RiskAssessment {
        model_version: MODEL_VERSION.to_string(),
        score,
        threshold,
        requires_cab: !reasons.is_empty(),
        factors,
        cab_required_reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        // The caller, which holds the whole policy, records which it was.
        policy_digest: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: CabPolicy = CabPolicy {
        always_for_critical_infrastructure: true,
    };

    #[test]
    fn the_factor_names_are_the_apis() {
        let json = serde_json::to_value(RiskFactors {
            privilege_impact: 0.0,
            supply_chain_trust: 0.0,
            exploitability: 0.0,
            data_access: 0.0,
            sbom_vulnerability: 0.0,
            operational_complexity: 0.0,
            history: 0.0,
        })
        .unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut names = FACTOR_NAMES.to_vec();
        keys.sort_unstable();
        names.sort_unstable();
        assert_eq!(keys, names);
    }

    fn uniform(v: f64) -> RiskFactors {
        RiskFactors {
            privilege_impact: v,
            supply_chain_trust: v,
            exploitability: v,
            data_access: v,
            sbom_vulnerability: v,
            operational_complexity: v,
            history: v,
        }
    }

    #[test]
    fn the_score_is_the_rounded_weighted_sum_with_derived_blast_radius() {
        // 0.5 × 90 for the given factors, 0.1 × 10 for a LAB-only blast radius.
        let a = assess(&uniform(0.5), Ring::Lab, false, false, &DEFAULT).unwrap();
        assert_eq!(a.score, 46);
        assert_eq!(a.threshold, ThresholdLabel::AutomatedAllowed);
        assert!(!a.requires_cab);
        assert_eq!(a.factors.len(), 8);
        assert_eq!(a.model_version, "risk_model_v1.0");
        let blast = a
            .factors
            .iter()
            .find(|f| f.factor == "blast_radius")
            .unwrap();
        assert_eq!(
            (blast.value, blast.weight, blast.contribution),
            (0.1, 10.0, 1.0)
        );
    }

    #[test]
    fn targeting_global_raises_the_score_past_the_cab_threshold() {
        let a = assess(&uniform(0.5), Ring::Global, false, false, &DEFAULT).unwrap();
        assert_eq!(a.score, 55);
        assert_eq!(a.threshold, ThresholdLabel::CabRequired);
        assert!(a.requires_cab);
    }

    #[test]
    fn critical_infrastructure_multiplies_blast_radius_and_caps_it() {
        assert!((blast_radius(Ring::Pilot, true) - 0.6).abs() < 1e-9);
        assert_eq!(blast_radius(Ring::Global, true), 1.0);
    }

    #[test]
    fn privileged_tooling_always_needs_cab() {
        let a = assess(&uniform(0.0), Ring::Lab, false, true, &DEFAULT).unwrap();
        assert_eq!(a.score, 1);
        assert_eq!(a.threshold, ThresholdLabel::PrivilegedTooling);
        assert!(a.requires_cab);
    }

    #[test]
    fn critical_infrastructure_goes_to_the_cab_under_the_policy_and_says_why() {
        // 45 (as the auditor found: GLOBAL, critical infrastructure, low factors) needs no CAB by
        // score; the policy sends it there anyway, and the assessment says why.
        let a = assess(&uniform(0.39), Ring::Global, true, false, &DEFAULT).unwrap();
        assert_eq!(a.score, 45);
        assert!(a.requires_cab);
        assert_eq!(a.threshold, ThresholdLabel::CabRequired);
        assert_eq!(
            a.cab_required_reason.as_deref(),
            Some("critical infrastructure (policy cab.always_for_critical_infrastructure)")
        );
        let off = CabPolicy {
            always_for_critical_infrastructure: false,
        };
        let a = assess(&uniform(0.39), Ring::Global, true, false, &off).unwrap();
        assert!(!a.requires_cab);
        assert_eq!(a.cab_required_reason, None);
        let a = assess(&uniform(0.9), Ring::Global, true, true, &DEFAULT).unwrap();
        assert_eq!(
            a.cab_required_reason.as_deref(),
            Some(
                "risk score 91 is above the CAB threshold 50; privileged tooling; \
                 critical infrastructure (policy cab.always_for_critical_infrastructure)"
            )
        );
    }

    #[test]
    fn a_critical_sbom_finding_is_refused() {
        let mut f = uniform(0.1);
        f.sbom_vulnerability = 1.0;
        assert_eq!(
            assess(&f, Ring::Lab, false, false, &DEFAULT),
            Err(DomainError::CriticalVulnerability)
        );
    }

    #[test]
    fn values_outside_zero_to_one_are_refused_naming_the_factor() {
        let mut f = uniform(0.1);
        f.history = 1.5;
        let err = assess(&f, Ring::Lab, false, false, &DEFAULT).unwrap_err();
        assert_eq!(
            err,
            DomainError::invalid("risk_factors.history", "must be a number from 0 to 1")
        );
        f.history = f64::NAN;
        assert!(assess(&f, Ring::Lab, false, false, &DEFAULT).is_err());
    }
}
