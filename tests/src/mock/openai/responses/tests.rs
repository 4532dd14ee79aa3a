//! `/v1/responses` over real HTTP: the response object, its typed events, forced function
//! calls, and OpenAI's errors.

use std::time::Duration;

use serde_json::{json, Value};

use super::{chat_request, expected_reply_of};
use crate::mock::openai::forced_tool_call_of;
use crate::mock::{Behaviour, Failure, FinishReason, MockProvider};

async fn mock(completion_tokens: u32) -> MockProvider {
    MockProvider::start(Behaviour {
        completion_tokens,
        ..Behaviour::default()
    })
    .await
    .unwrap()
}

async fn post(mock: &MockProvider, body: &Value) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{}/responses", mock.base_url()))
        .bearer_auth("sk-test")
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// `(event name, data)` of each event, checking the name is the data's `type` and the
/// sequence numbers count from 0.
fn events(body: &str) -> Vec<(String, Value)> {
    let events: Vec<(String, Value)> = body
        .trim_end_matches("\n\n")
        .split("\n\n")
        .map(|event| {
            let (name, data) = event.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_string();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str(), "{data}");
            (name, data)
        })
        .collect();
    for (i, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], i, "{data}");
    }
    events
}

fn weather() -> Value {
    json!({"type": "function", "name": "get_weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}})
}

#[tokio::test]
async fn a_response_object_in_openais_shape() {
    let mock = mock(4).await;
    let request = json!({"model": "gpt-5-mini", "instructions": "Be brief.",
                         "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}],
                         "temperature": 0.5, "store": false});
    let (status, text) = post(&mock, &request).await;
    assert_eq!(status, 200, "{text}");
    let mut body: Value = serde_json::from_str(&text).unwrap();
    let object = body.as_object_mut().unwrap();
    let id = object.remove("id").unwrap();
    assert!(id.as_str().unwrap().starts_with("resp_"));
    assert!(object.remove("created_at").unwrap().is_u64());
    let item_id = body["output"][0]["id"].as_str().unwrap().to_string();
    assert!(item_id.starts_with("msg_"), "{item_id}");
    // Input tokens: 3 + (3 + "Be brief." 2) + (3 + "Hello there" 2) = 13.
    assert_eq!(
        body,
        json!({"object": "response", "status": "completed", "background": false, "error": null,
               "incomplete_details": null, "instructions": "Be brief.", "max_output_tokens": null,
               "model": "gpt-5-mini",
               "output": [{"id": item_id, "type": "message", "status": "completed", "role": "assistant",
                           "content": [{"type": "output_text", "annotations": [], "logprobs": [],
                                        "text": "Hello there Hello there"}]}],
               "parallel_tool_calls": true, "previous_response_id": null,
               "reasoning": {"effort": null, "summary": null}, "service_tier": "default",
               "store": false, "temperature": 0.5, "text": {"format": {"type": "text"}},
               "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
               "usage": {"input_tokens": 13, "input_tokens_details": {"cached_tokens": 0},
                         "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0},
                         "total_tokens": 17},
               "user": null, "metadata": {}})
    );
    let reply = expected_reply_of(&request, 4);
    assert_eq!(
        (reply.prompt_tokens, reply.content.as_str()),
        (13, "Hello there Hello there")
    );
    let call = &mock.calls()[0];
    assert_eq!(call.path, "/v1/responses");
    assert_eq!(
        call.response_id.as_ref(),
        id.as_str().map(str::to_string).as_ref()
    );
    assert_eq!((call.prompt_tokens, call.completion_tokens), (13, 4));
    assert_eq!(call.finish_reason, Some(FinishReason::Stop));

    // A cap that cuts the reply: incomplete, for that reason.
    let (_, text) = post(
        &mock,
        &json!({"model": "m", "input": "a b c", "max_output_tokens": 16, "prompt_cache_key": "k"}),
    )
    .await;
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["status"], "completed", "4 words fit under 16: {body}");
    assert_eq!(body["usage"]["input_tokens_details"]["cached_tokens"], 4);
    let mock = self::mock(20).await;
    let (_, text) = post(
        &mock,
        &json!({"model": "m", "input": "a b c", "max_output_tokens": 16}),
    )
    .await;
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (
            &body["status"],
            &body["incomplete_details"],
            &body["output"][0]["status"]
        ),
        (
            &json!("incomplete"),
            &json!({"reason": "max_output_tokens"}),
            &json!("incomplete")
        )
    );
    assert_eq!(body["usage"]["output_tokens"], 16);
}

#[tokio::test]
async fn a_stream_of_typed_events() {
    let mock = mock(3).await;
    let request = json!({"model": "gpt-5-mini", "input": "Name a river", "stream": true});
    let (status, text) = post(&mock, &request).await;
    assert_eq!(status, 200);
    let events = events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let created = &events[0].1["response"];
    assert_eq!(
        (&created["status"], &created["usage"]),
        (&json!("in_progress"), &Value::Null)
    );
    let deltas: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"].as_str())
        .collect();
    assert_eq!(deltas, expected_reply_of(&request, 3).content);
    assert_eq!(deltas, "Name a river");
    let completed = &events[10].1["response"];
    assert_eq!(completed["id"], created["id"]);
    assert_eq!(
        completed["output"][0]["content"][0]["text"],
        deltas.as_str()
    );
    // 3 + (3 + 3)
    assert_eq!(completed["usage"]["input_tokens"], 9);
    assert_eq!(events[7].1["text"], deltas.as_str());
    let call = &mock.calls()[0];
    assert!(call.stream && call.usage_reported);
    assert_eq!(call.content, "Name a river");
}

#[tokio::test]
async fn a_forced_function_call_instead_of_text() {
    let mock = mock(5).await;
    let request = json!({"model": "m", "input": "Weather in Paris", "tools": [weather()],
                         "tool_choice": {"type": "function", "name": "get_weather"}});
    let (status, text) = post(&mock, &request).await;
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let item = &body["output"][0];
    assert_eq!(item["type"], "function_call", "{body}");
    assert!(item["id"].as_str().unwrap().starts_with("fc_"));
    assert!(item["call_id"].as_str().unwrap().starts_with("call_"));
    let (name, arguments) = forced_tool_call_of(&chat_request(&request)).unwrap();
    assert_eq!(
        (item["name"].as_str(), item["arguments"].as_str()),
        (Some(name.as_str()), Some(arguments.as_str()))
    );
    assert_eq!(arguments, r#"{"city":"Weather in Paris"}"#);
    assert_eq!(body["usage"]["output_tokens"], 3);

    // Streamed: the item, its arguments in one delta, then completed.
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["tool_choice"] = json!("required");
    let (_, text) = post(&mock, &streamed).await;
    let events = events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert_eq!(events[2].1["item"]["arguments"], "");
    assert_eq!(events[3].1["delta"], arguments.as_str());
    assert_eq!(events[3].1["item_id"], events[2].1["item"]["id"]);

    // The function's output sent back: a text answer seeded by the last user message.
    let follow = json!({"model": "m", "tools": [weather()], "tool_choice": "required", "input": [
        {"role": "user", "content": "Weather in Paris"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": arguments},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]});
    let (_, text) = post(&mock, &follow).await;
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["output"][0]["type"], "message", "{body}");
    // 3 + (3 + 3) + (3 + 0) + (3 + 1)
    assert_eq!(body["usage"]["input_tokens"], 16);
}

#[tokio::test]
async fn bad_requests_get_openais_errors() {
    let mock = mock(2).await;
    for (body, status, param, code) in [
        (
            json!({"model": "m", "input": "x", "stop": ["."]}),
            400,
            "stop",
            "unknown_parameter",
        ),
        (
            json!({"model": "m"}),
            400,
            "input",
            "missing_required_parameter",
        ),
        (
            json!({"input": "x"}),
            400,
            "model",
            "missing_required_parameter",
        ),
        (
            json!({"model": "m", "input": 5}),
            400,
            "input",
            "invalid_type",
        ),
        (
            json!({"model": "m", "input": "x", "max_output_tokens": 5}),
            400,
            "max_output_tokens",
            "integer_below_min_value",
        ),
        (
            json!({"model": "m", "input": [{"type": "reasoning"}]}),
            400,
            "input[0].type",
            "invalid_value",
        ),
        (
            json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}),
            400,
            "input[0].role",
            "invalid_value",
        ),
        (
            json!({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}),
            400,
            "input[0].call_id",
            "missing_required_parameter",
        ),
    ] {
        let (got, text) = post(&mock, &body).await;
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(got, status, "{body}: {text}");
        assert_eq!(
            (
                &error["error"]["param"],
                &error["error"]["code"],
                &error["error"]["type"]
            ),
            (&json!(param), &json!(code), &json!("invalid_request_error")),
            "{body}: {text}"
        );
    }
    let response = reqwest::Client::new()
        .post(format!("{}/responses", mock.base_url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Injected failures: a status, then an error event mid-stream.
    mock.fail_next([
        Failure::rate_limited(Duration::from_secs(1)),
        Failure::MidStreamError {
            after_chunks: 5,
            error: None,
        },
    ]);
    let (status, _) = post(&mock, &json!({"model": "m", "input": "x"})).await;
    assert_eq!(status, 429);
    let (status, text) = post(
        &mock,
        &json!({"model": "m", "input": "a b", "stream": true}),
    )
    .await;
    assert_eq!(status, 200);
    let events = events(&text);
    assert_eq!(events.len(), 6, "{text}");
    let (name, error) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(error["code"], "server_error");
    let call = mock.calls().pop().unwrap();
    assert_eq!((call.completion_tokens, call.usage_reported), (1, false));
    assert!(call.error.is_some());
}
