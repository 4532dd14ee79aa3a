//! Per-request routing hints, `"sluice": {"route": {...}}`: a caller narrows or steers the
//! choice among the deployments its request may already use (docs/scheduling.md#routing).
//! A hint never widens that set: residency rules and the model's own deployments still bound
//! it.
//!
//! The ingress checks the hints and writes them, as JSON, to the request record's
//! `attributes[ROUTE_ATTRIBUTE]` (a caller's own value of that attribute is never kept); the
//! worker reads them back.

use serde::{Deserialize, Serialize};

/// Request attribute carrying the checked hints as JSON.
pub const ROUTE_ATTRIBUTE: &str = "sluice.route";

/// The highest `max_cost_per_mtok` accepted (USD per million tokens): above any list price.
pub const MAX_COST_PER_MTOK: f64 = 10_000.0;
/// The highest `max_latency_ms` accepted.
pub const MAX_LATENCY_MS: u64 = 600_000;

/// Which strategy a request asks to be preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prefer {
    Cost,
    Latency,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteHints {
    /// Only deployments whose price for this request, per million of its tokens (prompt
    /// plus completion cap), is at most this many USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_per_mtok: Option<f64>,
    /// Only deployments whose measured latency (time to first token for streams) is at
    /// most this; a deployment not measured yet qualifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<u64>,
    /// Order the request's deployments by this strategy instead of the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer: Option<Prefer>,
}

impl RouteHints {
    /// The field that is out of bounds, and how.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if let Some(cost) = self.max_cost_per_mtok {
            if !(0.0..=MAX_COST_PER_MTOK).contains(&cost) {
                return Err((
                    "sluice.route.max_cost_per_mtok",
                    "must be a number of USD per million tokens from 0 to 10000",
                ));
            }
        }
        if let Some(ms) = self.max_latency_ms {
            if !(1..=MAX_LATENCY_MS).contains(&ms) {
                return Err((
                    "sluice.route.max_latency_ms",
                    "must be an integer from 1 to 600000",
                ));
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == RouteHints::default()
    }

    /// The hints a record carries; none when absent, or unreadable (only the ingress writes
    /// the attribute, and a hint can only narrow a choice, so ignoring one is safe).
    pub fn of_attributes(attributes: &std::collections::HashMap<String, String>) -> RouteHints {
        attributes
            .get(ROUTE_ATTRIBUTE)
            .and_then(|json| serde_json::from_str::<RouteHints>(json).ok())
            .filter(|h| h.check().is_ok())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_round_trip_through_the_attribute_and_bad_ones_are_named() {
        let hints: RouteHints = serde_json::from_str(
            r#"{"max_cost_per_mtok": 2.5, "max_latency_ms": 800, "prefer": "latency"}"#,
        )
        .unwrap();
        assert_eq!(hints.check(), Ok(()));
        let mut attributes = std::collections::HashMap::new();
        attributes.insert(
            ROUTE_ATTRIBUTE.to_string(),
            serde_json::to_string(&hints).unwrap(),
        );
        assert_eq!(RouteHints::of_attributes(&attributes), hints);

        for (json, param) in [
            (
                r#"{"max_cost_per_mtok": -1}"#,
                "sluice.route.max_cost_per_mtok",
            ),
            (
                r#"{"max_cost_per_mtok": 1e9}"#,
                "sluice.route.max_cost_per_mtok",
            ),
            (r#"{"max_latency_ms": 0}"#, "sluice.route.max_latency_ms"),
            (
                r#"{"max_latency_ms": 600001}"#,
                "sluice.route.max_latency_ms",
            ),
        ] {
            let hints: RouteHints = serde_json::from_str(json).unwrap();
            assert_eq!(hints.check().unwrap_err().0, param, "{json}");
            attributes.insert(ROUTE_ATTRIBUTE.to_string(), json.to_string());
            assert!(RouteHints::of_attributes(&attributes).is_empty(), "{json}");
        }
        assert!(serde_json::from_str::<RouteHints>(r#"{"prefer": "cheap"}"#).is_err());
        assert!(serde_json::from_str::<RouteHints>(r#"{"region": "eu"}"#).is_err());
        attributes.insert(ROUTE_ATTRIBUTE.to_string(), "not json".into());
        assert!(RouteHints::of_attributes(&attributes).is_empty());
    }
}
