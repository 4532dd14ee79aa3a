use serde::Deserialize;

/// `[ops]`: where the ops listener (`/metrics`, `/healthz`, `/readyz`) listens. Env
/// `SLUICE_OPS_LISTEN`. Absent: no ops listener. Never the tenant listener's address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// `host:port`; port 0 picks a free port (logged at start).
    pub listen: Option<String>,
}
