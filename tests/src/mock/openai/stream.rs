//! The SSE events of a streamed chat completion: a role chunk, content chunks, a finish
//! chunk, the usage chunk if asked for, then `data: [DONE]`; or a cut or an error event where
//! a fault was injected.

use std::io;
use std::time::Duration;

use axum::body::Bytes;
use serde::Serialize;

use super::wire::{
    finish_reason, ChunkChoiceJson, ChunkJson, Delta, ErrorEnvelope, FunctionJson, ToolCallJson,
    UsageJson,
};
use super::{Completion, Fault, Progress, StreamShape, SERVICE_TIER, SYSTEM_FINGERPRINT};
use crate::mock::reply;

/// Words in the first `chunks_sent` of `chunks` chunks: chunk `j` holds words
/// `[j*words/chunks, (j+1)*words/chunks)`.
pub(crate) fn words_in_chunks(chunks_sent: u32, words: u32, chunks: u32) -> u32 {
    if chunks == 0 {
        return 0;
    }
    (u64::from(chunks_sent) * u64::from(words) / u64::from(chunks)) as u32
}

/// A body stream item that ends the connection. The yield first lets hyper flush what was
/// already sent, so the client gets everything before the cut.
pub(crate) fn cut() -> impl futures::Stream<Item = io::Result<Bytes>> {
    futures::stream::once(async {
        tokio::task::yield_now().await;
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection cut by the mock provider",
        ))
    })
}

#[derive(Clone, Copy)]
enum Step {
    Role,
    Content(u32),
    Finish,
    Usage,
    Done,
    End,
}

/// The SSE events of one streamed completion, produced one at a time.
pub(super) struct EventStream {
    completion: Completion,
    include_usage: bool,
    chunks: u32,
    delay: Duration,
    next: Step,
    /// Events sent so far, `[DONE]` excluded.
    sent: u32,
    /// Where the next content chunk starts in the reply.
    offset: usize,
    progress: Progress,
}

impl Drop for EventStream {
    /// hyper drops the body when the stream ended or the client went away: record which,
    /// and what really got out.
    fn drop(&mut self) {
        let gone = !matches!(self.next, Step::End);
        let words = self.completion.reply.completion_tokens;
        let chunks_sent = self.sent.saturating_sub(1).min(self.chunks);
        let sent_words = words_in_chunks(chunks_sent, words, self.chunks);
        let content_end = self.offset;
        let finish_sent = self.sent >= self.chunks + 2;
        let usage_sent = self.include_usage && self.sent >= self.chunks + 3;
        let content = self.completion.reply.content.clone();
        self.progress.shared.update(self.progress.seq, |call| {
            call.ended_at = Some(std::time::SystemTime::now());
            if gone {
                call.client_gone = true;
                call.completion_tokens = sent_words;
                call.content = content[..content_end].to_owned();
                if !finish_sent {
                    call.finish_reason = None;
                }
                call.usage_reported = usage_sent;
            }
        });
    }
}

impl EventStream {
    pub(super) fn new(mut completion: Completion, progress: Progress) -> EventStream {
        let shape = completion.stream.take().unwrap_or(StreamShape {
            include_usage: false,
            chunks: completion.reply.completion_tokens,
            delay: Duration::ZERO,
        });
        EventStream {
            completion,
            include_usage: shape.include_usage,
            chunks: shape.chunks,
            delay: shape.delay,
            next: Step::Role,
            sent: 0,
            offset: 0,
            progress,
        }
    }

    pub(super) async fn next_event(&mut self) -> Option<io::Result<Bytes>> {
        if let Step::End = self.next {
            return None;
        }
        let fault_due = self
            .completion
            .fault
            .as_ref()
            .is_some_and(|fault| self.sent >= fault.after() || matches!(self.next, Step::Done));
        if fault_due {
            self.next = Step::End;
            return match self.completion.fault.take() {
                Some(Fault::Break { .. }) => {
                    tokio::task::yield_now().await;
                    Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "stream cut by the mock provider",
                    )))
                }
                Some(Fault::Error { error, .. }) => {
                    Some(sse_event(&ErrorEnvelope { error: &error }))
                }
                None => None,
            };
        }

        let event = match self.next {
            Step::Role => {
                self.next = if self.chunks > 0 {
                    Step::Content(0)
                } else {
                    Step::Finish
                };
                self.chunk(Delta::Role {
                    role: "assistant",
                    content: "",
                    refusal: (),
                })
            }
            Step::Content(j) if self.completion.tool_call.is_some() => {
                self.next = if j == 0 {
                    Step::Content(1)
                } else {
                    Step::Finish
                };
                self.tool_call_chunk(j)
            }
            Step::Content(j) => {
                if j > 0 && !self.delay.is_zero() {
                    tokio::time::sleep(self.delay).await;
                }
                let words = self.completion.reply.completion_tokens;
                let in_chunk = words_in_chunks(j + 1, words, self.chunks)
                    - words_in_chunks(j, words, self.chunks);
                let start = self.offset;
                self.offset = reply::words_end(&self.completion.reply.content, start, in_chunk);
                self.next = if j + 1 < self.chunks {
                    Step::Content(j + 1)
                } else {
                    Step::Finish
                };
                self.chunk(Delta::Content {
                    content: &self.completion.reply.content[start..self.offset],
                })
            }
            Step::Finish => {
                self.next = if self.include_usage {
                    Step::Usage
                } else {
                    Step::Done
                };
                sse_event(&ChunkJson {
                    choices: &[ChunkChoiceJson {
                        index: 0,
                        delta: Delta::Empty {},
                        logprobs: (),
                        finish_reason: Some(finish_reason(self.completion.reply.finish_reason)),
                    }],
                    ..self.chunk_envelope()
                })
            }
            Step::Usage => {
                self.next = Step::Done;
                sse_event(&ChunkJson {
                    choices: &[],
                    usage: Some(Some(UsageJson::new(&self.completion.reply))),
                    ..self.chunk_envelope()
                })
            }
            Step::Done => {
                self.next = Step::End;
                return Some(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
            }
            Step::End => return None,
        };
        self.sent += 1;
        Some(event)
    }

    fn chunk(&self, delta: Delta<'_>) -> io::Result<Bytes> {
        sse_event(&ChunkJson {
            choices: &[ChunkChoiceJson {
                index: 0,
                delta,
                logprobs: (),
                finish_reason: None,
            }],
            ..self.chunk_envelope()
        })
    }

    /// Chunk `j` of a tool call: the id, type and name with empty arguments, then the
    /// arguments (OpenAI's own split, in fewer pieces).
    fn tool_call_chunk(&self, j: u32) -> io::Result<Bytes> {
        let Some(call) = &self.completion.tool_call else {
            return Ok(Bytes::new());
        };
        let delta = if j == 0 {
            ToolCallJson {
                index: Some(0),
                id: Some(&call.id),
                kind: Some("function"),
                function: FunctionJson {
                    name: Some(&call.name),
                    arguments: "",
                },
            }
        } else {
            ToolCallJson {
                index: Some(0),
                id: None,
                kind: None,
                function: FunctionJson {
                    name: None,
                    arguments: &call.arguments,
                },
            }
        };
        self.chunk(Delta::ToolCalls {
            tool_calls: [delta],
        })
    }

    /// The fields every chunk repeats.
    fn chunk_envelope(&self) -> ChunkJson<'_> {
        ChunkJson {
            id: &self.completion.id,
            object: "chat.completion.chunk",
            created: self.completion.created,
            model: &self.completion.model,
            service_tier: SERVICE_TIER,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: &[],
            // With include_usage every chunk says `"usage": null` until the usage chunk.
            usage: self.include_usage.then_some(None),
        }
    }
}

fn sse_event<T: Serialize>(event: &T) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(320);
    buf.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut buf, event).map_err(io::Error::other)?;
    buf.extend_from_slice(b"\n\n");
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_words_evenly_and_completely() {
        assert_eq!(
            (0..=3)
                .map(|m| words_in_chunks(m, 10, 3))
                .collect::<Vec<_>>(),
            [0, 3, 6, 10]
        );
        assert_eq!(words_in_chunks(5, 5, 5), 5);
        assert_eq!(words_in_chunks(0, 0, 0), 0);
    }
}
