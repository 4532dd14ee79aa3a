//! Masking with placeholders, and putting the originals back into the caller's answer.
//!
//! The mapping from placeholder to value lives only in the memory of the ingress task that
//! serves the sync call, for the duration of that call: it is never published, stored or
//! logged. Providers, Kafka and ClickHouse only ever see the placeholders.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{json, Value};

use super::pii::Category;

/// `[EMAIL_1]`-shaped tokens (to avoid handing out one the caller already wrote).
static PLACEHOLDER: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\[[A-Z]{2,6}_[0-9]{1,6}\]").ok());

/// Hands out one stable placeholder per distinct value of a request.
#[derive(Debug, Default)]
pub struct Masker {
    by_value: HashMap<(Category, String), String>,
    counters: HashMap<Category, u32>,
    /// Placeholder-shaped tokens present in the caller's own text.
    taken: HashSet<String>,
    /// Placeholder -> original value.
    pairs: Vec<(String, String)>,
}

impl Masker {
    /// Notes placeholder-shaped tokens already in `text`, so they are never handed out.
    pub fn reserve_existing(&mut self, text: &str) {
        if !text.contains('[') {
            return;
        }
        if let Some(re) = PLACEHOLDER.as_ref() {
            self.taken
                .extend(re.find_iter(text).map(|m| m.as_str().to_string()));
        }
    }

    /// The placeholder for `value`: the same one every time the value appears.
    pub fn placeholder(&mut self, category: Category, value: &str) -> String {
        let key = (category, value.to_string());
        if let Some(p) = self.by_value.get(&key) {
            return p.clone();
        }
        let counter = self.counters.entry(category).or_insert(0);
        let placeholder = loop {
            *counter += 1;
            let candidate = format!("[{}_{}]", category.label(), counter);
            if !self.taken.contains(&candidate) {
                break candidate;
            }
        };
        self.pairs.push((placeholder.clone(), value.to_string()));
        self.by_value.insert(key, placeholder.clone());
        placeholder
    }

    /// The restorer for the caller's answer; `None` when nothing was masked.
    pub fn into_restorer(self) -> Option<Restorer> {
        if self.pairs.is_empty() {
            return None;
        }
        let longest = self.pairs.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        Some(Restorer {
            map: self.pairs.into_iter().collect(),
            longest,
        })
    }
}

/// Puts masked values back.
#[derive(Clone)]
pub struct Restorer {
    map: HashMap<String, String>,
    longest: usize,
}

impl std::fmt::Debug for Restorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The values are the caller's secrets.
        f.debug_struct("Restorer")
            .field("placeholders", &self.map.len())
            .finish_non_exhaustive()
    }
}

impl Restorer {
    /// How many values it restores.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// `text` with every known placeholder replaced by its value.
    pub fn restore(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let candidate = &rest[open..];
            let close = candidate
                .as_bytes()
                .iter()
                .take(self.longest)
                .position(|b| *b == b']');
            match close.and_then(|c| self.map.get(&candidate[..=c]).map(|v| (c, v))) {
                Some((c, value)) => {
                    out.push_str(value);
                    rest = &candidate[c + 1..];
                }
                None => {
                    out.push('[');
                    rest = &candidate[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Restores every string inside the `choices` of a chat completion (JSON). `None` when
    /// the body is not JSON or nothing changed.
    pub fn restore_completion(&self, body: &str) -> Option<String> {
        if !body.contains('[') {
            return None;
        }
        let mut value: Value = serde_json::from_str(body).ok()?;
        let changed = self.restore_value(value.get_mut("choices")?);
        changed.then(|| value.to_string())
    }

    fn restore_value(&self, value: &mut Value) -> bool {
        match value {
            Value::String(s) if s.contains('[') => {
                let restored = self.restore(s);
                let changed = restored != *s;
                *s = restored;
                changed
            }
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |acc, v| self.restore_value(v) | acc),
            Value::Object(map) => map
                .values_mut()
                .fold(false, |acc, v| self.restore_value(v) | acc),
            _ => false,
        }
    }

    /// Where a placeholder may start that the next fragment could complete: the last `[`,
    /// if what follows it could still become a placeholder.
    fn partial_start(&self, text: &str) -> usize {
        let Some(open) = text.rfind('[') else {
            return text.len();
        };
        let tail = &text[open + 1..];
        let could_be = tail.len() < self.longest
            && tail
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if could_be {
            open
        } else {
            text.len()
        }
    }
}

/// Whether a chunk's JSON may hold a placeholder or the start of one: a `[` followed by
/// a capital letter, or ending a string (`"choices":[{` does not count).
fn may_hold_placeholder(data: &str) -> bool {
    data.as_bytes()
        .windows(2)
        .any(|w| w[0] == b'[' && (w[1].is_ascii_uppercase() || w[1] == b'"'))
}

/// Which streamed text a held-back tail belongs to: a choice's content, or one of its
/// tool calls' arguments.
type Slot = (u64, Option<u64>);

/// Restores a stream of OpenAI chunks, holding back the end of a fragment that may be the
/// start of a placeholder split across chunks (`[EMA` + `IL_1]`).
#[derive(Debug)]
pub struct StreamRestorer {
    restorer: Restorer,
    tails: HashMap<Slot, String>,
    /// id, created and model of the last chunk, for a closing chunk of our own.
    last: Option<(Value, Value, Value)>,
}

impl StreamRestorer {
    pub fn new(restorer: Restorer) -> StreamRestorer {
        StreamRestorer {
            restorer,
            tails: HashMap::new(),
            last: None,
        }
    }

    fn push(&mut self, slot: Slot, fragment: &str) -> String {
        let mut text = self.tails.remove(&slot).unwrap_or_default();
        text.push_str(fragment);
        let hold = self.restorer.partial_start(&text);
        let out = self.restorer.restore(&text[..hold]);
        if hold < text.len() {
            self.tails.insert(slot, text[hold..].to_string());
        }
        out
    }

    fn take_tail(&mut self, slot: Slot) -> Option<String> {
        self.tails.remove(&slot).map(|t| self.restorer.restore(&t))
    }

    /// One chunk (JSON) in, the restored chunk out. Text held back from earlier chunks is
    /// released when its choice finishes.
    pub fn chunk(&mut self, data: String) -> String {
        if self.tails.is_empty() && !may_hold_placeholder(&data) {
            return data;
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(&data) else {
            return data;
        };
        self.last = Some((
            chunk["id"].clone(),
            chunk["created"].clone(),
            chunk["model"].clone(),
        ));
        let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut) else {
            return data;
        };
        for choice in choices {
            let index = choice["index"].as_u64().unwrap_or(0);
            let finished = !choice["finish_reason"].is_null();
            let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) else {
                continue;
            };
            if let Some(Value::String(content)) = delta.get_mut("content") {
                *content = self.push((index, None), content);
            }
            if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                for call in calls {
                    let position = call["index"].as_u64().unwrap_or(0);
                    if let Some(Value::String(args)) = call.pointer_mut("/function/arguments") {
                        *args = self.push((index, Some(position)), args);
                    }
                }
            }
            if finished {
                self.release_into(index, delta);
            }
        }
        chunk.to_string()
    }

    /// Puts the held-back text of choice `index` into `delta`.
    fn release_into(&mut self, index: u64, delta: &mut serde_json::Map<String, Value>) {
        let mut slots: Vec<Slot> = self
            .tails
            .keys()
            .filter(|(i, _)| *i == index)
            .copied()
            .collect();
        slots.sort();
        for slot in slots {
            let Some(tail) = self.take_tail(slot) else {
                continue;
            };
            match slot.1 {
                None => {
                    let before = delta
                        .get("content")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    delta.insert("content".into(), json!(before + &tail));
                }
                Some(position) => {
                    let calls = delta.entry("tool_calls").or_insert_with(|| json!([]));
                    if let Some(calls) = calls.as_array_mut() {
                        calls.push(json!({"index": position, "function": {"arguments": tail}}));
                    }
                }
            }
        }
    }

    /// At the end of the stream: a chunk with text still held back (a choice that never
    /// reported its finish), if any.
    pub fn finish(&mut self) -> Option<String> {
        if self.tails.is_empty() {
            return None;
        }
        let (id, created, model) = self.last.clone().unwrap_or_default();
        let mut indexes: Vec<u64> = self.tails.keys().map(|(i, _)| *i).collect();
        indexes.sort_unstable();
        indexes.dedup();
        let choices: Vec<Value> = indexes
            .into_iter()
            .map(|index| {
                let mut delta = serde_json::Map::new();
                self.release_into(index, &mut delta);
                json!({"index": index, "delta": delta, "finish_reason": null})
            })
            .collect();
        Some(
            json!({"id": id, "object": "chat.completion.chunk", "created": created,
                   "model": model, "choices": choices})
            .to_string(),
        )
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn restorer() -> Restorer {
        let mut m = Masker::default();
        assert_eq!(m.placeholder(Category::Email, "a@b.co"), "[EMAIL_1]");
        assert_eq!(m.placeholder(Category::Email, "c@d.co"), "[EMAIL_2]");
        assert_eq!(m.placeholder(Category::Email, "a@b.co"), "[EMAIL_1]");
        assert_eq!(
            m.placeholder(Category::Card, "4111111111111111"),
            "[CARD_1]"
        );
        m.into_restorer().unwrap()
    }

    #[test]
    fn placeholders_are_stable_and_avoid_the_callers_own() {
        let mut m = Masker::default();
        m.reserve_existing("I literally wrote [EMAIL_1] here");
        assert_eq!(m.placeholder(Category::Email, "x@y.co"), "[EMAIL_2]");
        assert!(Masker::default().into_restorer().is_none());
    }

    #[test]
    fn restores_known_placeholders_only() {
        let r = restorer();
        assert_eq!(
            r.restore("to [EMAIL_1], cc [EMAIL_2] [EMAIL_9] [x] [CARD_1]"),
            "to a@b.co, cc c@d.co [EMAIL_9] [x] 4111111111111111"
        );
        assert_eq!(r.restore("[[EMAIL_1]]"), "[a@b.co]");
        assert_eq!(r.restore("no brackets"), "no brackets");
    }

    #[test]
    fn restores_a_completion_body() {
        let r = restorer();
        let body = json!({"id": "x", "choices": [{"index": 0, "message": {"role": "assistant",
            "content": "Mail [EMAIL_1]", "tool_calls": [{"function": {"arguments": "{\"to\":\"[EMAIL_2]\"}"}}]}}]})
        .to_string();
        let out: Value = serde_json::from_str(&r.restore_completion(&body).unwrap()).unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], "Mail a@b.co");
        assert_eq!(
            out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"to\":\"c@d.co\"}"
        );
        assert!(r.restore_completion("{\"choices\": []}").is_none());
    }

    fn chunk(content: &str, finish: Option<&str>) -> String {
        json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]})
        .to_string()
    }

    fn content(data: &str) -> String {
        let v: Value = serde_json::from_str(data).unwrap();
        v["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn placeholders_split_across_chunks_are_restored() {
        let mut s = StreamRestorer::new(restorer());
        let parts = [
            "Write to [EM",
            "AIL_",
            "1] or [",
            "EMAIL_2",
            "] now [",
            "x] end [",
        ];
        let mut got = String::new();
        for p in parts {
            got.push_str(&content(&s.chunk(chunk(p, None))));
        }
        // The trailing `[` is held until the choice finishes.
        assert_eq!(got, "Write to a@b.co or c@d.co now [x] end ");
        got.push_str(&content(&s.chunk(chunk("", Some("stop")))));
        assert_eq!(got, "Write to a@b.co or c@d.co now [x] end [");
        assert!(s.finish().is_none());
    }

    #[test]
    fn a_stream_without_a_finish_chunk_gets_its_tail_at_the_end() {
        let mut s = StreamRestorer::new(restorer());
        assert_eq!(content(&s.chunk(chunk("hi [CARD", None))), "hi ");
        let last = s.finish().unwrap();
        assert_eq!(content(&last), "[CARD");
        let v: Value = serde_json::from_str(&last).unwrap();
        assert_eq!(v["id"], "c1");
    }

    #[test]
    fn tool_call_arguments_are_restored_in_streams() {
        let mut s = StreamRestorer::new(restorer());
        let call = |args: &str, finish: Option<&str>| {
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": args}}]}, "finish_reason": finish}]})
            .to_string()
        };
        let args = |data: &str| {
            let v: Value = serde_json::from_str(data).unwrap();
            v["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["function"]["arguments"].as_str().unwrap().to_string())
                .collect::<String>()
        };
        let mut got = args(&s.chunk(call("{\"to\": \"[EMAIL", None)));
        got.push_str(&args(&s.chunk(call("_1]\"}", None))));
        assert_eq!(got, "{\"to\": \"a@b.co\"}");
    }

    #[test]
    fn chunks_without_brackets_pass_untouched() {
        let mut s = StreamRestorer::new(restorer());
        let c = chunk("plain", None);
        assert_eq!(s.chunk(c.clone()), c);
    }
}
