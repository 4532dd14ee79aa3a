//! Data residency: a deployment may carry a `location` (`eu-west`, `on-prem`, `edge`, any
//! name), and `[[residency]]` rules name the locations a team's requests, or one key's, may
//! run in. Before the first attempt a request's chain of deployments is cut to the ones every
//! rule for its team and key allows, fallbacks included: a fallback that would leave the
//! allowed locations is never tried. When nothing is left the request fails with 503
//! `location_not_allowed`, naming the rule. A deployment without a location is in none.

use serde::Deserialize;

use crate::error::ConfigError;

/// `[[residency]]`: where one team's (or one key's) requests may run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencyRule {
    pub team: String,
    /// One key of the team (its id); without it the rule is the whole team's. A key's
    /// rule adds to its team's: both must allow a deployment.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Locations, or prefixes ending in `*` (`eu-*`).
    pub allowed_locations: Vec<String>,
}

impl ResidencyRule {
    fn applies(&self, team: &str, key_id: &str) -> bool {
        self.team == team && self.key_id.as_deref().is_none_or(|k| k == key_id)
    }

    fn allows(&self, location: Option<&str>) -> bool {
        let Some(location) = location else {
            return false;
        };
        self.allowed_locations
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => location.starts_with(prefix),
                None => location == p,
            })
    }

    /// How the rule reads in an error: `team "t" (key "k"): eu-*, on-prem`.
    fn describe(&self) -> String {
        let key = self
            .key_id
            .as_ref()
            .map(|k| format!(" (key \"{k}\")"))
            .unwrap_or_default();
        format!(
            "team \"{}\"{key}: {}",
            self.team,
            self.allowed_locations.join(", ")
        )
    }
}

/// Every rule, checked once at start-up.
#[derive(Debug, Default)]
pub struct Residency {
    rules: Vec<ResidencyRule>,
}

impl Residency {
    pub fn new(rules: &[ResidencyRule]) -> Residency {
        Residency {
            rules: rules.to_vec(),
        }
    }

    /// Keeps the deployments of `chain` every rule for `team` and `key_id` allows (in their
    /// order). `Err` names the rules when a rule applies and nothing is left.
    pub fn cut(
        &self,
        team: &str,
        key_id: &str,
        chain: Vec<usize>,
        location: impl Fn(usize) -> Option<String>,
    ) -> Result<Vec<usize>, String> {
        let rules: Vec<&ResidencyRule> = self
            .rules
            .iter()
            .filter(|r| r.applies(team, key_id))
            .collect();
        if rules.is_empty() {
            return Ok(chain);
        }
        let allowed: Vec<usize> = chain
            .into_iter()
            .filter(|&i| {
                let at = location(i);
                rules.iter().all(|r| r.allows(at.as_deref()))
            })
            .collect();
        if allowed.is_empty() {
            let names: Vec<String> = rules.iter().map(|r| r.describe()).collect();
            return Err(names.join("; "));
        }
        Ok(allowed)
    }
}

/// Start-up checks of `[[residency]]` and the deployments' `location` (in config order).
pub fn validate(rules: &[ResidencyRule], locations: &[Option<&str>]) -> Result<(), ConfigError> {
    let field = |field: String, problem: &'static str| ConfigError::Field { field, problem };
    for (i, location) in locations.iter().enumerate() {
        if location.is_some_and(|l| l.trim().is_empty() || l.contains('*')) {
            return Err(field(
                format!("deployments[{i}].location"),
                "must be a non-empty name without `*`",
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, r) in rules.iter().enumerate() {
        if r.team.trim().is_empty() {
            return Err(field(format!("residency[{i}].team"), "must not be empty"));
        }
        if !seen.insert((r.team.as_str(), r.key_id.as_deref())) {
            return Err(field(
                format!("residency[{i}]"),
                "repeats the team (and key) of an earlier rule",
            ));
        }
        if r.allowed_locations.is_empty() {
            return Err(field(
                format!("residency[{i}].allowed_locations"),
                "must name at least one location (a team that may run nowhere should have no key)",
            ));
        }
        for (j, p) in r.allowed_locations.iter().enumerate() {
            let star = p.find('*');
            if p.trim().is_empty() || star.is_some_and(|at| at != p.len() - 1) {
                return Err(field(
                    format!("residency[{i}].allowed_locations[{j}]"),
                    "must be a location or a prefix ending in `*`",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(team: &str, key_id: Option<&str>, allowed: &[&str]) -> ResidencyRule {
        ResidencyRule {
            team: team.into(),
            key_id: key_id.map(str::to_string),
            allowed_locations: allowed.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Deployments 0..4 at us-east, eu-west, eu-central, none, on-prem.
    fn at(i: usize) -> Option<String> {
        ["us-east", "eu-west", "eu-central", "", "on-prem"]
            .get(i)
            .filter(|l| !l.is_empty())
            .map(|l| l.to_string())
    }

    #[test]
    fn a_chain_is_cut_to_the_allowed_locations_in_its_order() {
        let residency = Residency::new(&[
            rule("eu-team", None, &["eu-*", "on-prem"]),
            rule("eu-team", Some("key_strict"), &["eu-west"]),
        ]);
        let chain = vec![0, 2, 3, 1, 4];
        assert_eq!(
            residency.cut("eu-team", "key_any", chain.clone(), at),
            Ok(vec![2, 1, 4])
        );
        assert_eq!(
            residency.cut("eu-team", "key_strict", chain.clone(), at),
            Ok(vec![1]),
            "a key's rule adds to its team's"
        );
        assert_eq!(
            residency.cut("other-team", "key", chain.clone(), at),
            Ok(chain),
            "no rule: the chain as it was"
        );
        let err = residency
            .cut("eu-team", "key_strict", vec![0, 2, 3], at)
            .unwrap_err();
        assert_eq!(
            err,
            "team \"eu-team\": eu-*, on-prem; team \"eu-team\" (key \"key_strict\"): eu-west"
        );
        assert!(
            residency.cut("eu-team", "k", vec![3], at).is_err(),
            "a deployment without a location is in no allowed location"
        );
    }

    #[test]
    fn rules_are_checked_at_start_up() {
        assert!(validate(&[rule("t", None, &["eu-*", "on-prem"])], &[]).is_ok());
        for bad in [
            vec![rule("t", None, &[])],
            vec![rule("", None, &["eu"])],
            vec![rule("t", None, &["e*u"])],
            vec![rule("t", None, &[""])],
            vec![rule("t", None, &["eu"]), rule("t", None, &["us"])],
        ] {
            assert!(validate(&bad, &[]).is_err(), "{bad:?}");
        }
        assert!(
            validate(&[], &[Some("eu-*")]).is_err(),
            "a location is a name"
        );
        assert!(validate(&[], &[Some(" ")]).is_err());
        assert!(validate(
            &[rule("t", None, &["eu"]), rule("t", Some("k"), &["eu"])],
            &[Some("eu"), None]
        )
        .is_ok());
    }
}
