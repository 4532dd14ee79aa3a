//! [`Budgets`]: the live ledger and the pricing of a request's worst-case reservation.

use std::sync::{Arc, Mutex};

use sluice_schemas::pricing::PriceTable;
use sluice_schemas::Request;

use super::ledger::{Exceeded, Ledger};
use crate::config::Config;

/// The ingress's budgets: the ledger and how to price a request's reservation.
pub struct Budgets {
    pub ledger: Arc<Mutex<Ledger>>,
    prices: PriceTable,
    default_completion_tokens: u32,
    grace_ms: i64,
}

impl Budgets {
    pub fn new(config: &Config) -> Budgets {
        Budgets {
            ledger: Arc::new(Mutex::new(Ledger::new(
                &config.budgets,
                config.budget.dedup_window,
            ))),
            prices: PriceTable::new(&config.resolved_prices()),
            default_completion_tokens: config.budget.default_completion_tokens,
            grace_ms: config.budget.reservation_grace_ms.as_millis() as i64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ledger.lock().map_or(true, |l| l.is_empty())
    }

    /// The most `r` can cost: its counted prompt at the input price plus its completion cap
    /// (or the configured default) at the output price, without cached-input discounts. A
    /// model (or alias) without its own price is reserved at the dearest configured price.
    pub fn max_cost_nanos(&self, r: &Request) -> i64 {
        let prompt = r.prompt_tokens.max(0) as u32;
        let completion = r
            .max_tokens
            .map_or(self.default_completion_tokens, |n| n.max(0) as u32);
        self.prices
            .max_cost_nanos([r.model.as_str()], prompt, completion)
            .or_else(|| self.prices.max_cost_any_nanos(prompt, completion))
            .unwrap_or(0)
    }

    /// What `prompt` and `completion` tokens of `model` cost at its list price (a cache
    /// hit's saving); 0 for a model without a price.
    pub fn cost_nanos(&self, model: &str, prompt: i32, completion: i32) -> i64 {
        self.prices
            .cost_nanos(model, prompt.max(0) as u32, 0, completion.max(0) as u32)
            .unwrap_or(0)
    }

    /// Admits `r` under every budget that applies to it and holds its reservation, or
    /// names the first budget it would exceed. Returns the reservation (0: no budget).
    pub fn admit(&self, r: &Request, now_ms: i64) -> Result<i64, Exceeded> {
        let Ok(mut ledger) = self.ledger.lock() else {
            return Ok(0);
        };
        if !ledger.applies(&r.team, &r.key_id) {
            return Ok(0);
        }
        let cost = self.max_cost_nanos(r);
        ledger.admit(
            &r.request_id,
            &r.team,
            &r.key_id,
            cost,
            now_ms,
            r.deadline_ms.saturating_add(self.grace_ms),
        )?;
        Ok(cost)
    }

    /// Drops a reservation whose request was not published after all.
    pub fn release(&self, request_id: &str) {
        if let Ok(mut ledger) = self.ledger.lock() {
            ledger.release(request_id);
        }
    }
}
