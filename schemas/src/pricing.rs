//! Model prices and the cost of a request in nano-USD, by exact integer arithmetic from
//! per-million-token prices. Shared: workers bill usage with it, the ingress prices budget
//! reservations with it.

use std::collections::HashMap;

use serde::Deserialize;

/// One model's price (`[[prices]]` in the price file both the workers and the ingress read,
/// `[pricing] file`, or inline in their configs), USD per million tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub model: String,
    pub input_per_million: f64,
    pub output_per_million: f64,
    #[serde(default)]
    pub cached_input_per_million: Option<f64>,
}

impl Price {
    /// Whether every price is finite and not negative.
    pub fn is_valid(&self) -> bool {
        [
            Some(self.input_per_million),
            Some(self.output_per_million),
            self.cached_input_per_million,
        ]
        .into_iter()
        .flatten()
        .all(|v| v.is_finite() && v >= 0.0)
    }
}

/// The prices a service bills with: those of the price file its config names (`[pricing]
/// file`, relative to the config file), then its inline `[[prices]]`. A model priced both
/// in the file and inline is refused: it would have two prices.
#[cfg(feature = "config")]
pub fn with_price_file(
    config_path: Option<&std::path::Path>,
    file: Option<&std::path::Path>,
    inline: Vec<Price>,
) -> Result<Vec<Price>, crate::config::ConfigError> {
    use crate::config::{from_file, relative_to, ConfigError};

    /// A price file holds `[[prices]]` and nothing else.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PriceFile {
        #[serde(default)]
        prices: Vec<Price>,
    }

    let Some(file) = file else {
        return Ok(inline);
    };
    let PriceFile { mut prices } = from_file(&relative_to(config_path, file))?;
    for (i, price) in inline.iter().enumerate() {
        if prices.iter().any(|p| p.model == price.model) {
            return Err(ConfigError::field(
                format!("prices[{i}] = \"{}\"", price.model),
                "is also priced in the [pricing] file: a model has one price",
            ));
        }
    }
    prices.extend(inline);
    Ok(prices)
}

/// The built-in price catalogue (`schemas/data/price_catalogue.toml`): public list prices
/// by the provider's model name, used for a model that has no `[[prices]]` entry.
#[cfg(feature = "config")]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    /// Where the prices were read.
    pub source: String,
    /// The day they were read (`YYYY-MM-DD`).
    pub as_of: String,
    pub prices: Vec<CatalogueEntry>,
}

/// One model of the [`Catalogue`].
#[cfg(feature = "config")]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueEntry {
    /// Who sells it at this price (`openai`, `anthropic`, `google`, ...).
    pub provider: String,
    /// The provider's name for the model.
    pub model: String,
    pub input_per_million: f64,
    pub output_per_million: f64,
    #[serde(default)]
    pub cached_input_per_million: Option<f64>,
    /// An embeddings model's default vector length (its provider's documentation).
    #[serde(default)]
    pub dimensions: Option<u32>,
}

#[cfg(feature = "config")]
impl Catalogue {
    /// The default vector length of the embeddings model `model`, if the catalogue has it.
    pub fn dimensions(&self, model: &str) -> Option<u32> {
        self.prices
            .iter()
            .find(|e| e.model == model)
            .and_then(|e| e.dimensions)
    }

    /// The catalogue built into the services.
    pub fn builtin() -> &'static Catalogue {
        static BUILTIN: std::sync::OnceLock<Catalogue> = std::sync::OnceLock::new();
        BUILTIN.get_or_init(|| {
            use figment::providers::Format;
            figment::Figment::from(figment::providers::Toml::string(include_str!(
                "../data/price_catalogue.toml"
            )))
            .extract()
            // The file is part of the build; its test parses it.
            .unwrap_or_else(|e| panic!("the built-in price catalogue does not parse: {e}"))
        })
    }

    /// The catalogue's price of `model` (the provider's name), as a [`Price`] named `as`.
    pub fn price(&self, model: &str, named: &str) -> Option<Price> {
        self.prices
            .iter()
            .find(|e| e.model == model)
            .map(|e| Price {
                model: named.to_string(),
                input_per_million: e.input_per_million,
                output_per_million: e.output_per_million,
                cached_input_per_million: e.cached_input_per_million,
            })
    }
}

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

    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
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

    /// The most a request can cost if it may be served by any of `models` (an alias's
    /// fallback chain): no cached-input discount, the highest input and output price of the
    /// chain. Models without a price are skipped; `None` when none has one.
    pub fn max_cost_nanos<'a>(
        &self,
        models: impl IntoIterator<Item = &'a str>,
        prompt: u32,
        completion: u32,
    ) -> Option<i64> {
        models
            .into_iter()
            .filter_map(|m| self.by_model.get(m))
            .map(|p| {
                (prompt as i64)
                    .saturating_mul(p.input)
                    .saturating_add((completion as i64).saturating_mul(p.output))
            })
            .max()
    }

    /// [`PriceTable::max_cost_nanos`] over every priced model: the conservative price of a
    /// model the table does not know.
    pub fn max_cost_any_nanos(&self, prompt: u32, completion: u32) -> Option<i64> {
        self.max_cost_nanos(self.by_model.keys().map(String::as_str), prompt, completion)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[cfg(feature = "config")]
    #[test]
    fn the_catalogue_parses_with_valid_unique_prices() {
        let catalogue = Catalogue::builtin();
        assert!(catalogue.prices.len() >= 30, "{}", catalogue.prices.len());
        assert_eq!(catalogue.as_of.len(), 10, "{}", catalogue.as_of);
        let mut seen = std::collections::HashSet::new();
        for e in &catalogue.prices {
            assert!(seen.insert(e.model.as_str()), "{} twice", e.model);
            let p = catalogue.price(&e.model, "x").unwrap();
            assert!(p.is_valid(), "{}", e.model);
            assert!(
                p.cached_input_per_million.unwrap_or(0.0) <= p.input_per_million,
                "{}: a cache read dearer than input",
                e.model
            );
        }
        for provider in [
            "openai",
            "anthropic",
            "google",
            "mistral",
            "deepseek",
            "together",
        ] {
            assert!(
                catalogue.prices.iter().any(|e| e.provider == provider),
                "{provider}"
            );
        }
        let mini = catalogue.price("gpt-4o-mini", "alias").unwrap();
        assert_eq!(mini.model, "alias");
        assert_eq!(
            (
                mini.input_per_million,
                mini.output_per_million,
                mini.cached_input_per_million
            ),
            (0.15, 0.6, Some(0.075))
        );
        assert!(catalogue.price("no-such-model", "x").is_none());
    }

    fn price(model: &str, input: f64, output: f64, cached: Option<f64>) -> Price {
        Price {
            model: model.into(),
            input_per_million: input,
            output_per_million: output,
            cached_input_per_million: cached,
        }
    }

    #[test]
    fn cost_is_exact() {
        let table = PriceTable::new(&[price("gpt-4o-mini", 0.15, 0.6, Some(0.075))]);
        // 1000 prompt (200 cached) + 500 completion:
        // 800 * 150 + 200 * 75 + 500 * 600 = 120000 + 15000 + 300000 nano-USD.
        assert_eq!(
            table.cost_nanos("gpt-4o-mini", 1000, 200, 500),
            Some(435_000)
        );
        assert_eq!(table.cost_nanos("unknown", 1, 0, 1), None);
    }

    #[cfg(feature = "config")]
    #[test]
    fn the_price_file_then_inline_prices() {
        use std::path::Path;

        let dir = std::env::temp_dir().join(format!("sluice-prices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("prices.toml"),
            "[[prices]]\nmodel = \"a\"\ninput_per_million = 1.0\noutput_per_million = 2.0\n",
        )
        .unwrap();
        let config = dir.join("service.toml");
        let file = Some(Path::new("prices.toml"));

        let prices = with_price_file(Some(&config), file, vec![price("b", 3.0, 4.0, None)]);
        let models: Vec<String> = prices.unwrap().into_iter().map(|p| p.model).collect();
        assert_eq!(models, ["a", "b"]);
        // No file named: the inline prices, as they are.
        let inline = with_price_file(Some(&config), None, vec![price("b", 3.0, 4.0, None)]);
        assert_eq!(inline.unwrap().len(), 1);

        let twice = with_price_file(Some(&config), file, vec![price("a", 1.0, 2.0, None)]);
        assert_eq!(
            twice.unwrap_err().to_string(),
            "invalid configuration: `prices[0] = \"a\"` is also priced in the [pricing] file: a model has one price"
        );
        let missing = with_price_file(Some(&config), Some(Path::new("none.toml")), vec![]);
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .ends_with("none.toml does not exist"),
            "the missing file is named"
        );
        std::fs::write(dir.join("prices.toml"), "[pricing]\nfree_models = []\n").unwrap();
        let err = with_price_file(Some(&config), file, vec![]).unwrap_err();
        assert!(format!("{err:?}").contains("pricing"), "{err:?}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn max_cost_takes_the_dearest_model_of_a_chain() {
        let table = PriceTable::new(&[
            price("cheap", 0.15, 0.6, None),
            price("dear", 3.0, 15.0, Some(0.3)),
        ]);
        // 100 * 3000 + 10 * 15000
        assert_eq!(
            table.max_cost_nanos(["cheap", "dear", "unpriced"], 100, 10),
            Some(450_000)
        );
        assert_eq!(table.max_cost_nanos(["cheap"], 100, 10), Some(21_000));
        assert_eq!(table.max_cost_nanos(["unpriced"], 100, 10), None);
        assert_eq!(table.max_cost_any_nanos(100, 10), Some(450_000));
        assert!(!price("x", f64::NAN, 1.0, None).is_valid());
        assert!(!price("x", 1.0, 1.0, Some(-1.0)).is_valid());
        assert!(price("x", 1.0, 1.0, None).is_valid());
    }
}
