//! What a budget refusal says: to the caller (its message) and to audit (its policy).

use std::fmt;

use super::{format_utc, Exceeded, Period};
use crate::error::{ApiError, SpendRefusal};

fn usd(nanos: i64) -> String {
    format!("${:.4}", nanos as f64 / 1e9)
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Budget exceeded: the {scope} `{subject}` {period} budget of {limit} has {spent} spent and {reserved} reserved by requests in flight; this request may cost up to {cost}. It resets at {resets}.",
            scope = self.scope.as_str(),
            subject = self.subject,
            period = match self.period {
                Period::Day => "daily",
                Period::Month => "monthly",
            },
            limit = usd(self.limit_nanos),
            spent = usd(self.spent_nanos),
            reserved = usd(self.reserved_nanos),
            cost = usd(self.cost_nanos),
            resets = format_utc(self.resets_at_ms),
        )
    }
}

impl std::error::Error for Exceeded {}

impl SpendRefusal for Exceeded {
    fn audit_policy(&self) -> String {
        Exceeded::audit_policy(self)
    }

    fn fits_once_settled(&self) -> bool {
        self.spent_nanos.saturating_add(self.cost_nanos) <= self.limit_nanos
    }
}

impl From<Exceeded> for ApiError {
    fn from(exceeded: Exceeded) -> ApiError {
        ApiError::BudgetExceeded(Box::new(exceeded))
    }
}

impl Exceeded {
    /// The `policy` of the `rejected` audit event.
    pub fn audit_policy(&self) -> String {
        format!(
            "budget:{}:{}:{}:exceeded",
            self.scope.as_str(),
            self.subject,
            self.period.as_str()
        )
    }
}
