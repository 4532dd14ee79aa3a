//! Prompt token counting with tiktoken, the way OpenAI bills chat messages.

use sluice_schemas::openai::ChatMessage;
use tiktoken_rs::CoreBPE;

use crate::config::{Config, ModelConfig, Section};
use crate::error::ConfigError;

/// Start-up check of `[[models]]`: a named tokenizer is one this module has.
impl Section for Vec<ModelConfig> {
    fn check(&self, _: &Config) -> Result<(), ConfigError> {
        for model in self {
            if let Some(t) = &model.tokenizer {
                if Tokenizer::parse(t).is_none() {
                    return Err(ConfigError::Field {
                        field: format!("models[{}].tokenizer", model.id),
                        problem: "must be \"o200k_base\" or \"cl100k_base\"",
                    });
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenizer {
    O200kBase,
    Cl100kBase,
}

impl Tokenizer {
    pub fn parse(name: &str) -> Option<Tokenizer> {
        match name {
            "o200k_base" => Some(Tokenizer::O200kBase),
            "cl100k_base" => Some(Tokenizer::Cl100kBase),
            _ => None,
        }
    }

    /// The tokenizer OpenAI uses for a model name; cl100k for anything it does not know.
    pub fn for_model(model: &str) -> Tokenizer {
        match tiktoken_rs::tokenizer::get_tokenizer(model) {
            Some(tiktoken_rs::tokenizer::Tokenizer::O200kBase)
            | Some(tiktoken_rs::tokenizer::Tokenizer::O200kHarmony) => Tokenizer::O200kBase,
            _ => Tokenizer::Cl100kBase,
        }
    }

    fn bpe(self) -> &'static CoreBPE {
        match self {
            Tokenizer::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Tokenizer::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    /// The tokens of one text, with no chat framing (an embeddings input).
    pub fn count(self, text: &str) -> usize {
        self.bpe().encode_ordinary(text).len()
    }

    /// Loads the vocabulary now rather than on the first request.
    pub fn warm(self) {
        let _ = self.bpe().encode_ordinary("warm up");
    }
}

/// Framing tokens per message and for priming the reply (OpenAI cookbook, current models).
const TOKENS_PER_MESSAGE: usize = 3;
const TOKENS_PER_NAME: usize = 1;
const REPLY_PRIMING: usize = 3;

/// Counts the prompt tokens of chat messages.
pub fn count_prompt_tokens(tokenizer: Tokenizer, messages: &[ChatMessage]) -> usize {
    let bpe = tokenizer.bpe();
    let mut total = REPLY_PRIMING;
    for message in messages {
        total += TOKENS_PER_MESSAGE;
        // Role names are single tokens in both vocabularies.
        total += 1;
        for text in message.text() {
            total += bpe.encode_ordinary(text).len();
        }
        if let Some(serde_json::Value::String(name)) = message.extra.get("name") {
            total += TOKENS_PER_NAME + bpe.encode_ordinary(name).len();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(json: &str) -> Vec<ChatMessage> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn counts_like_openai_cookbook() {
        // "Hello world" is 2 tokens in cl100k: 3 (priming) + 3 + 1 (role) + 2.
        let m = messages(r#"[{"role":"user","content":"Hello world"}]"#);
        assert_eq!(count_prompt_tokens(Tokenizer::Cl100kBase, &m), 9);
        let two = messages(
            r#"[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hello world"}]}]"#,
        );
        assert!(count_prompt_tokens(Tokenizer::O200kBase, &two) > 9);
    }

    #[test]
    fn tokenizer_by_model() {
        assert_eq!(Tokenizer::for_model("gpt-4o-mini"), Tokenizer::O200kBase);
        assert_eq!(Tokenizer::for_model("gpt-4"), Tokenizer::Cl100kBase);
        assert_eq!(Tokenizer::for_model("llama3"), Tokenizer::Cl100kBase);
    }
}
