//! How the mock writes a reply and counts tokens, the same for every provider, so a test can
//! compute what a user must see and be billed.
//!
//! - A token is a whitespace-separated word.
//! - The reply echoes the words of the last user message, cycled until it has as many words
//!   as the completion token count, joined by single spaces. No user words: `mock` repeated.
//!   `("ping 42", 5)` gives `"ping 42 ping 42 ping"`. Distinct prompts give distinct replies,
//!   so a test can tell whose reply a caller got.
//! - Completion tokens = `min(Behaviour::completion_tokens, the request's cap)`; finish reason
//!   is "length" when the cap cut the reply short, else "stop".
//! - Prompt tokens are provider specific; each provider module documents its rule.

use serde::{Deserialize, Serialize};

/// Why generation stopped, in provider-neutral terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The reply is complete.
    Stop,
    /// The request's token cap cut the reply short.
    Length,
    /// The reply is a call of one of the request's tools (OpenAI's wire format only).
    ToolCalls,
}

/// What the mock answers to a well-formed generation call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub content: String,
    pub prompt_tokens: u32,
    /// Prompt tokens reported as served from the provider's prompt cache (part of
    /// `prompt_tokens`); provider specific, 0 unless a provider module says otherwise.
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: FinishReason,
}

/// Words in `text`: the mock's token count.
pub fn count_words(text: &str) -> u32 {
    u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX)
}

/// The reply of `words` words echoing `seed` (see the module docs).
pub fn reply_text(seed: &str, words: u32) -> String {
    let seed = if seed.split_whitespace().next().is_some() {
        seed
    } else {
        "mock"
    };
    let mut reply = String::with_capacity(words as usize * 6);
    let mut cycle = seed.split_whitespace().cycle();
    for i in 0..words {
        if i > 0 {
            reply.push(' ');
        }
        if let Some(word) = cycle.next() {
            reply.push_str(word);
        }
    }
    reply
}

/// Completion tokens and finish reason for a reply of `configured` words under `cap`.
pub fn completion(configured: u32, cap: Option<u32>) -> (u32, FinishReason) {
    match cap {
        Some(cap) if cap < configured => (cap, FinishReason::Length),
        _ => (configured, FinishReason::Stop),
    }
}

/// Byte offset in `reply` (built by [`reply_text`]) where the word after `words` words
/// starts, counting the separating space into the next word; so `&reply[..words_end(reply,
/// n)]` is the first `n` words and chunks cut at these offsets concatenate back to `reply`.
pub fn words_end(reply: &str, from: usize, words: u32) -> usize {
    let mut end = from;
    for _ in 0..words {
        let rest = &reply[end..];
        let space = usize::from(rest.starts_with(' '));
        end += space + rest[space..].find(' ').unwrap_or(rest.len() - space);
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_echoes_the_prompt_words_cyclically() {
        assert_eq!(reply_text("ping 42", 5), "ping 42 ping 42 ping");
        assert_eq!(reply_text("  spaced\n out\t", 3), "spaced out spaced");
        assert_eq!(reply_text("", 3), "mock mock mock");
        assert_eq!(reply_text("anything", 0), "");
        assert_eq!(count_words(&reply_text("a b c", 7)), 7);
    }

    #[test]
    fn cap_cuts_and_sets_length() {
        assert_eq!(completion(16, None), (16, FinishReason::Stop));
        assert_eq!(completion(16, Some(16)), (16, FinishReason::Stop));
        assert_eq!(completion(16, Some(4)), (4, FinishReason::Length));
    }

    #[test]
    fn word_offsets_split_and_rejoin() {
        let reply = "one two three four";
        assert_eq!(&reply[..words_end(reply, 0, 2)], "one two");
        let a = words_end(reply, 0, 1);
        let b = words_end(reply, a, 2);
        let c = words_end(reply, b, 1);
        assert_eq!(
            [&reply[..a], &reply[a..b], &reply[b..c]],
            ["one", " two three", " four"]
        );
        assert_eq!(c, reply.len());
    }
}
