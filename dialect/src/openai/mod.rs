//! The internal shape, OpenAI's chat completions, as the other dialects read and write it:
//! a chat request's messages, content parts, tool calls and parameters (`request`); a
//! `chat.completion`, its `chat.completion.chunk`s and usage (`response`).

mod request;
mod response;

pub use request::{
    completion_cap, image, messages, number, parse_arguments, parts, response_format, role,
    stop_sequences, text, tool_calls, tool_choice, tool_names, tools, Image, Part, ResponseFormat,
    Tool, ToolCall, ToolChoice,
};
pub use response::{
    choice, completion, generated_id, tool_call_json, unix_now, usage, Chunks, Completion,
    StreamItem, StreamToOpenAi,
};

#[cfg(test)]
mod tests;
