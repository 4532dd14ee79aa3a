//! The guardrails on an answer: output moderation, then restoration of masked values, for
//! a whole completion ([`Output`]) or a stream ([`StreamOutput`]).

use std::sync::Arc;

use serde_json::Value;
use sluice_schemas::{Result as ResultRecord, Status};

use super::policy::Policy;
use super::restore::{Restorer, StreamRestorer};
use crate::error::ApiError;

/// The text a completion (JSON) shows the caller: its choices' message contents.
pub fn completion_texts(body: &str) -> Vec<String> {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    value["choices"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|c| c["message"]["content"].as_str())
        .map(str::to_string)
        .collect()
}

/// The guardrails on the answer of one sync call: output moderation, then restoration.
#[derive(Debug)]
pub struct Output {
    policy: Arc<Policy>,
    restorer: Option<Restorer>,
}

impl Output {
    pub fn new(policy: Arc<Policy>, restorer: Option<Restorer>) -> Output {
        Output { policy, restorer }
    }

    /// Nothing to check or restore.
    pub fn is_noop(&self) -> bool {
        self.restorer.is_none() && !self.policy.moderates_output()
    }

    /// A whole answer: an error if moderation refuses it, else the answer with masked
    /// values restored.
    pub async fn finish(&self, result: &mut ResultRecord) -> Result<(), ApiError> {
        if result.status != Status::Completed {
            return Ok(());
        }
        if self.policy.moderates_output() {
            self.policy
                .moderate_output(&completion_texts(&result.body))
                .await?;
        }
        if let Some(restored) = self
            .restorer
            .as_ref()
            .and_then(|r| r.restore_completion(&result.body))
        {
            result.body = restored;
        }
        Ok(())
    }

    pub fn into_stream(self) -> StreamOutput {
        let every = self
            .policy
            .output_classifier()
            .map_or(0, |c| c.config.stream_check_every);
        StreamOutput {
            moderated: self.policy.moderates_output(),
            policy: self.policy,
            restorer: self.restorer.map(StreamRestorer::new),
            text: String::new(),
            every,
            since_check: 0,
        }
    }
}

/// The guardrails on a streamed answer: restoration chunk by chunk, moderation of the text
/// so far every `stream_check_every` chunks and of the whole text before the final event.
#[derive(Debug)]
pub struct StreamOutput {
    policy: Arc<Policy>,
    restorer: Option<StreamRestorer>,
    moderated: bool,
    /// The provider's text so far (with placeholders: the classifier sees no PII).
    text: String,
    every: u32,
    since_check: u32,
}

impl StreamOutput {
    /// One chunk (JSON) in, the chunk for the caller out.
    pub fn chunk(&mut self, data: String) -> String {
        if self.moderated {
            if let Ok(chunk) = serde_json::from_str::<Value>(&data) {
                for choice in chunk["choices"].as_array().map_or(&[][..], Vec::as_slice) {
                    if let Some(text) = choice["delta"]["content"].as_str() {
                        self.text.push_str(text);
                    }
                }
            }
            self.since_check += 1;
        }
        match &mut self.restorer {
            Some(r) => r.chunk(data),
            None => data,
        }
    }

    /// The periodic check, when one is due.
    pub async fn check_due(&mut self) -> Result<(), ApiError> {
        if !self.moderated || self.every == 0 || self.since_check < self.every {
            return Ok(());
        }
        self.since_check = 0;
        self.policy
            .moderate_output(std::slice::from_ref(&self.text))
            .await
    }

    /// The check of the whole text, before the stream's final event.
    pub async fn check_final(&mut self) -> Result<(), ApiError> {
        if !self.moderated {
            return Ok(());
        }
        self.policy
            .moderate_output(std::slice::from_ref(&self.text))
            .await
    }

    /// A last chunk with text held back for restoration, if any.
    pub fn finish(&mut self) -> Option<String> {
        self.restorer.as_mut().and_then(StreamRestorer::finish)
    }
}
