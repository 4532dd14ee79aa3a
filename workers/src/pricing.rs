//! Cost of a request in nano-USD, exact integer arithmetic from per-million-token prices.

use std::collections::HashMap;

use crate::config::Price;

/// Prices in nano-USD per token: $1 per million tokens is 1,000 nano-USD per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TokenPrices {
    input: i64,
    output: i64,
    cached_input: i64,
}

#[derive(Debug, Default, Clone)]
pub struct PriceTable {
    by_model: HashMap<String, TokenPrices>,
}

fn nanos_per_token(per_million_usd: f64) -> i64 {
    // Prices are quoted with at most 3 decimals per million tokens, which is exact here.
    (per_million_usd * 1000.0).round() as i64
}

impl PriceTable {
    pub fn new(prices: &[Price]) -> PriceTable {
        let by_model = prices
            .iter()
            .map(|p| {
                let input = nanos_per_token(p.input_per_million);
                (
                    p.model.clone(),
                    TokenPrices {
                        input,
                        output: nanos_per_token(p.output_per_million),
                        cached_input: p.cached_input_per_million.map_or(input, nanos_per_token),
                    },
                )
            })
            .collect();
        PriceTable { by_model }
    }

    /// Cost of one request; a model without a price costs 0 (and is logged by the caller).
    pub fn cost_nanos(
        &self,
        model: &str,
        prompt: u32,
        cached: u32,
        completion: u32,
    ) -> Option<i64> {
        let p = self.by_model.get(model)?;
        let cached = cached.min(prompt) as i64;
        let uncached = prompt as i64 - cached;
        Some(uncached * p.input + cached * p.cached_input + completion as i64 * p.output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_exact() {
        let table = PriceTable::new(&[Price {
            model: "gpt-4o-mini".into(),
            input_per_million: 0.15,
            output_per_million: 0.6,
            cached_input_per_million: Some(0.075),
        }]);
        // 1000 prompt (200 cached) + 500 completion:
        // 800 * 150 + 200 * 75 + 500 * 600 = 120000 + 15000 + 300000 nano-USD.
        assert_eq!(
            table.cost_nanos("gpt-4o-mini", 1000, 200, 500),
            Some(435_000)
        );
        assert_eq!(table.cost_nanos("unknown", 1, 0, 1), None);
    }
}
