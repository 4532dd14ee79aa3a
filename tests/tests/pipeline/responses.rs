//! `POST /v1/responses` end to end: the Responses request goes through the
//! pipeline as a chat request, the answer comes back as a `response` object or its typed
//! events, billed like chat; stored conversations for a team whose retention policy allows them.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::mock::openai::expected_reply;
use sluice_tests::mock::Behaviour;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

async fn stack(completion_tokens: u32) -> Stack {
    Stack::start(StackOptions {
        behaviour: Behaviour {
            completion_tokens,
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await
}

fn tool() -> Value {
    json!({"type": "function", "name": "lookup", "description": "Looks a river up",
           "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_response_is_the_providers_answer_in_the_responses_shape_and_is_billed() {
    let stack = stack(6).await;
    let (status, answer, id) = {
        let response = stack
            .http
            .post(format!("{}/v1/responses", stack.base))
            .bearer_auth(KEY_A)
            .json(
                &json!({"model": MODEL, "input": "Name three rivers of Europe",
                          "instructions": "Be terse.", "max_output_tokens": 40,
                          "tools": [tool()], "tool_choice": "auto", "metadata": {"job": "t"},
                          "text": {"format": {"type": "json_schema", "name": "rivers",
                                              "schema": {"type": "object"}}}}),
            )
            .send()
            .await
            .unwrap();
        let id = response.headers()["x-sluice-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
            id,
        )
    };
    assert_eq!(status, 200, "{answer}");
    // What the provider got: the chat form of the request.
    let call = stack.mock.calls().pop().unwrap();
    let sent = call.body.clone().unwrap();
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be terse."},
               {"role": "user", "content": "Name three rivers of Europe"}])
    );
    assert_eq!(sent["max_completion_tokens"], 40);
    assert_eq!(sent["tools"][0]["function"]["name"], "lookup");
    assert_eq!(sent["response_format"]["json_schema"]["name"], "rivers");
    assert!(
        sent.get("metadata").is_none() && sent.get("input").is_none(),
        "{sent}"
    );

    let expected = expected_reply(&sent, 6);
    assert_eq!(answer["object"], "response", "{answer}");
    assert_eq!(
        answer["id"],
        format!("resp_{}", id.trim_start_matches("req_"))
    );
    assert_eq!(answer["status"], "completed");
    assert_eq!(answer["output"][0]["type"], "message");
    assert_eq!(
        answer["output"][0]["content"][0]["text"],
        expected.content.as_str()
    );
    assert_eq!(answer["usage"]["input_tokens"], expected.prompt_tokens);
    assert_eq!(answer["usage"]["output_tokens"], expected.completion_tokens);

    let cost = (f64::from(expected.prompt_tokens) * PRICE_IN * 1000.0
        + f64::from(expected.completion_tokens) * PRICE_OUT * 1000.0)
        .round() as i64;
    assert_eq!(
        stack
            .usage_row(&id, "prompt_tokens, completion_tokens, cost_nanos")
            .await,
        format!(
            "{}\t{}\t{cost}",
            expected.prompt_tokens, expected.completion_tokens
        )
    );

    // The cap cut it: incomplete, as OpenAI says it.
    let (status, cut) = stack
        .post(
            "/v1/responses",
            KEY_A,
            json!({"model": MODEL, "input": "more", "max_output_tokens": 2}),
        )
        .await;
    assert_eq!(status, 200, "{cut}");
    assert_eq!(cut["status"], "incomplete");
    assert_eq!(
        cut["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    stack.stop().await;
}

/// SSE frames as (event name, data).
fn frames(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .filter_map(|frame| {
            let mut name = None;
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(n) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
                    name = Some(n.trim().to_string());
                } else if let Some(d) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                    data.push_str(d);
                }
            }
            Some((name?, serde_json::from_str(&data).ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_response_is_the_typed_event_sequence_with_usage() {
    let stack = stack(9).await;
    let response = stack
        .http
        .post(format!("{}/v1/responses", stack.base))
        .bearer_auth(KEY_A)
        .json(&json!({"model": MODEL, "stream": true,
                      "input": [{"role": "user", "content": [{"type": "input_text", "text": "Tell me about the Danube"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let frames = frames(&response.text().await.unwrap());
    let names: Vec<&str> = frames.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        &names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ],
        "{names:?}"
    );
    assert_eq!(names.last(), Some(&"response.completed"), "{names:?}");
    for (i, (name, data)) in frames.iter().enumerate() {
        assert_eq!(data["sequence_number"], i, "{name}");
        assert_eq!(data["type"], name.as_str());
    }
    let sent = stack.mock.calls().pop().unwrap().body.unwrap();
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    let expected = expected_reply(&sent, 9);
    let text: String = frames
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, expected.content);
    let done = &frames.last().unwrap().1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(
        done["output"][0]["content"][0]["text"],
        expected.content.as_str()
    );
    assert_eq!(done["usage"]["output_tokens"], expected.completion_tokens);
    assert_eq!(done["usage"]["input_tokens"], expected.prompt_tokens);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_the_responses_api_cannot_do_statelessly_is_refused_and_never_sent() {
    let stack = stack(4).await;
    let cases = [
        (
            json!({"model": MODEL, "input": "x", "previous_response_id": "resp_123"}),
            "previous_response_id",
        ),
        (
            json!({"model": MODEL, "input": "x", "store": true}),
            "store",
        ),
        (
            json!({"model": MODEL, "input": "x", "background": "yes"}),
            "background",
        ),
        (
            json!({"model": MODEL, "input": "x", "background": true, "stream": true}),
            "stream",
        ),
        (
            json!({"model": MODEL, "input": "x", "tools": [{"type": "web_search"}]}),
            "tools",
        ),
        (
            json!({"model": MODEL, "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input",
        ),
        (json!({"model": MODEL}), "input"),
        (
            json!({"model": MODEL, "input": "x", "max_output_tokens": -1}),
            "max_output_tokens",
        ),
        (
            json!({"model": MODEL, "input": "x", "reasoning": {"effort": "high"}}),
            "reasoning",
        ),
        (
            json!({"model": MODEL, "input": "x", "frobnicate": 1}),
            "body",
        ),
    ];
    for (body, param) in cases {
        let (status, answer) = stack.post("/v1/responses", KEY_A, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["param"], param, "{body}: {answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error", "{answer}");
    }
    let (status, answer) = stack
        .post(
            "/v1/responses",
            KEY_A,
            json!({"model": "nope", "input": "x"}),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    let (status, _) = stack
        .post(
            "/v1/responses",
            "sk-wrong",
            json!({"model": MODEL, "input": "x"}),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(stack.mock.call_count(), 0);
    stack.stop().await;
}

/// An Idempotency-Key retry gets the first response, as a response object or as its
/// events, and no second provider call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotent_retry_of_a_response_replays_it() {
    let stack = stack(5).await;
    let key = format!("{}-resp", stack.prefix);
    let send = |stream: bool| {
        let mut body = json!({"model": MODEL, "input": "Say hello"});
        if stream {
            body["stream"] = json!(true);
        }
        stack
            .http
            .post(format!("{}/v1/responses", stack.base))
            .bearer_auth(KEY_A)
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
    };
    let first: Value = send(false).await.unwrap().json().await.unwrap();
    let again = send(false).await.unwrap();
    assert_eq!(again.headers()["x-sluice-idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["output"], first["output"]);
    assert_eq!(again["usage"], first["usage"]);
    assert_eq!(stack.mock.call_count(), 1);
    // The same key with another body (a stream now) is another request: refused.
    let other = send(true).await.unwrap();
    assert_eq!(other.status(), 422);
    stack.stop().await;
}

/// `background: true` queues the response as an async request; `GET /v1/responses/{id}`
/// shows it queued, then completed; another team cannot see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_background_response_is_polled_until_it_completes() {
    let stack = stack(7).await;
    let (status, queued) = stack
        .post(
            "/v1/responses",
            KEY_A,
            json!({"model": MODEL, "input": "Tell me about the Rhine", "background": true}),
        )
        .await;
    assert_eq!(status, 200, "{queued}");
    assert_eq!(queued["object"], "response");
    assert_eq!(queued["status"], "queued", "{queued}");
    let id = queued["id"].as_str().unwrap().to_string();
    let done = eventually(WAIT, || async {
        let (status, r) = stack.get(&format!("/v1/responses/{id}"), KEY_A).await;
        assert_eq!(status, 200, "{r}");
        (r["status"] == "completed").then_some(r)
    })
    .await
    .expect("completed");
    let sent = stack.mock.calls().pop().unwrap().body.unwrap();
    let expected = expected_reply(&sent, 7);
    assert_eq!(done["id"], id.as_str());
    assert_eq!(
        done["output"][0]["content"][0]["text"],
        expected.content.as_str()
    );
    assert_eq!(done["usage"]["output_tokens"], expected.completion_tokens);
    // The id is the async request's: /v1/requests shows the same request.
    let request_id = id.replacen("resp_", "req_", 1);
    let (status, request) = stack
        .get(&format!("/v1/requests/{request_id}"), KEY_A)
        .await;
    assert_eq!(
        (status, request["status"].as_str()),
        (200, Some("completed"))
    );
    // Another team's id, or one that is not a response id, is not found.
    for (key, path) in [
        (KEY_B, format!("/v1/responses/{id}")),
        (KEY_A, "/v1/responses/resp_nope%2F..".to_string()),
        (KEY_A, "/v1/responses/msg_123".to_string()),
    ] {
        let (status, body) = stack.get(&path, key).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tool_call_comes_back_as_a_function_call_item_and_its_output_continues_the_turn() {
    let stack = stack(4).await;
    let post = |body: Value| {
        stack
            .http
            .post(format!("{}/v1/responses", stack.base))
            .bearer_auth(KEY_A)
            .json(&body)
            .send()
    };
    let ask =
        json!({"model": MODEL, "input": "Danube", "tools": [tool()], "tool_choice": "required"});
    let answer: Value = post(ask.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(answer["status"], "completed", "{answer}");
    let call = &answer["output"][0];
    assert_eq!(call["type"], "function_call", "{answer}");
    assert_eq!(call["name"], "lookup");
    assert_eq!(call["arguments"], r#"{"name":"Danube"}"#);
    let call_id = call["call_id"].as_str().unwrap().to_string();
    assert!(call_id.starts_with("call_"), "{call}");
    // Billed on what the provider reported: the mock counts the arguments' words.
    assert_eq!(answer["usage"]["output_tokens"], 1);

    // Streamed: the call's events, the arguments whole at the end.
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let frames = frames(&post(streamed).await.unwrap().text().await.unwrap());
    let names: Vec<&str> = frames.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"response.function_call_arguments.delta"),
        "{names:?}"
    );
    let done = frames
        .iter()
        .find(|(n, _)| n == "response.function_call_arguments.done")
        .map(|(_, d)| d)
        .unwrap();
    assert_eq!(done["arguments"], r#"{"name":"Danube"}"#);
    let completed = &frames.last().unwrap().1["response"];
    assert_eq!(completed["output"][0]["type"], "function_call");
    assert_eq!(completed["output"][0]["name"], "lookup");

    // The caller runs the tool and sends the call and its output back: the provider gets
    // an assistant tool call and a tool message, and answers in text.
    let follow = json!({"model": MODEL, "tools": [tool()], "tool_choice": "required",
        "input": [{"role": "user", "content": "Danube"}, call.clone(),
                  {"type": "function_call_output", "call_id": call_id, "output": "2850 km"}]});
    let text: Value = post(follow).await.unwrap().json().await.unwrap();
    assert_eq!(text["status"], "completed", "{text}");
    assert_eq!(text["output"][0]["type"], "message", "{text}");
    let sent = stack.mock.calls().pop().unwrap().body.unwrap();
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages[1]["tool_calls"][0]["id"], call_id.as_str());
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": call_id, "content": "2850 km"})
    );
    assert_eq!(
        text["output"][0]["content"][0]["text"],
        expected_reply(&sent, 4).content.as_str()
    );
    stack.stop().await;
}

fn conversations_for_a_and_b(config: &mut sluice_ingress::Config) {
    config.retention.conversation_teams = vec!["team-a".into(), "team-b".into()];
}

/// What the provider got on its last call: (role, content) of each message.
fn last_messages(stack: &Stack) -> Vec<(String, String)> {
    let body = stack.mock.calls().pop().unwrap().body.unwrap();
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let content = m["content"]
                .as_str()
                .map_or_else(|| m["content"].to_string(), str::to_string);
            (m["role"].as_str().unwrap().to_string(), content)
        })
        .collect()
}

fn roles(messages: &[(String, String)]) -> Vec<&str> {
    messages.iter().map(|(r, _)| r.as_str()).collect()
}

async fn respond(stack: &Stack, key: &str, body: Value) -> (u16, Value) {
    stack.post("/v1/responses", key, body).await
}

/// A team whose retention policy allows stored conversations continues a response with
/// `previous_response_id` across a sync, a background and a streamed turn: the provider
/// sees the whole conversation each time (instructions not carried over, as OpenAI does);
/// another team cannot continue it, and a team without the policy is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stored_conversation_continues_across_sync_background_and_streamed_turns() {
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            completion_tokens: 5,
            ..Behaviour::default()
        },
        ingress_config: Some(conversations_for_a_and_b),
        ..StackOptions::default()
    })
    .await;

    // Turn 1, sync, stored.
    let (status, first) = respond(
        &stack,
        KEY_A,
        json!({"model": MODEL, "input": "My name is Ada.", "instructions": "Be terse.", "store": true}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["store"], true);
    assert_eq!(first["previous_response_id"], Value::Null);
    let first_id = first["id"].as_str().unwrap().to_string();
    let first_text = first["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(roles(&last_messages(&stack)), ["system", "user"]);

    // Turn 2, background, from turn 1: the provider gets turn 1 and its answer first.
    let (status, queued) = respond(
        &stack,
        KEY_A,
        json!({"model": MODEL, "input": "What is my name?", "previous_response_id": first_id,
               "store": true, "background": true}),
    )
    .await;
    assert_eq!(status, 200, "{queued}");
    let second_id = queued["id"].as_str().unwrap().to_string();
    let second = eventually(WAIT, || async {
        let (_, r) = stack
            .get(&format!("/v1/responses/{second_id}"), KEY_A)
            .await;
        (r["status"] == "completed").then_some(r)
    })
    .await
    .expect("the background turn completes");
    let second_text = second["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let sent = last_messages(&stack);
    assert_eq!(
        sent,
        [
            ("user".to_string(), "My name is Ada.".to_string()),
            ("assistant".to_string(), first_text.clone()),
            ("user".to_string(), "What is my name?".to_string()),
        ]
    );

    // Turn 3, streamed, from turn 2 (whose answer the ingress never held: it is read from
    // the stored completions).
    let streamed = stack
        .http
        .post(format!("{}/v1/responses", stack.base))
        .bearer_auth(KEY_A)
        .json(&json!({"model": MODEL, "stream": true, "store": true,
                      "previous_response_id": second_id,
                      "input": [{"role": "user", "content": [{"type": "input_text", "text": "Once more."}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    // A response id is its request id with `resp_` for `req_`.
    let third_id = streamed.headers()["x-sluice-request-id"]
        .to_str()
        .unwrap()
        .replacen("req_", "resp_", 1);
    let events = streamed.text().await.unwrap();
    assert!(events.contains("response.completed"), "{events}");
    let sent = last_messages(&stack);
    assert_eq!(
        roles(&sent),
        ["user", "assistant", "user", "assistant", "user"]
    );
    assert_eq!(sent[3].1, second_text);

    // Turn 4, sync, not stored, from the streamed turn.
    let (status, fourth) = respond(
        &stack,
        KEY_A,
        json!({"model": MODEL, "input": "Last one.", "previous_response_id": third_id}),
    )
    .await;
    assert_eq!(status, 200, "{fourth}");
    assert_eq!(fourth["store"], false);
    assert_eq!(roles(&last_messages(&stack)).len(), 7);
    let calls = stack.mock.calls().len();

    // Team B may store conversations, but not continue team A's; an unknown id is a 404 too.
    for id in [first_id.as_str(), "resp_0123456789abcdef", "nonsense"] {
        let (status, body) = respond(
            &stack,
            KEY_B,
            json!({"model": MODEL, "input": "x", "previous_response_id": id}),
        )
        .await;
        assert_eq!(status, 404, "{id}: {body}");
    }
    // A team whose policy keeps no conversations: refused by name, never sent.
    let (status, key_c) = stack
        .post("/admin/keys", ADMIN_KEY, json!({"team": "team-c"}))
        .await;
    assert_eq!(status, 201, "{key_c}");
    let key_c = key_c["key"].as_str().unwrap().to_string();
    for (body, param) in [
        (
            json!({"model": MODEL, "input": "x", "store": true}),
            "store",
        ),
        (
            json!({"model": MODEL, "input": "x", "previous_response_id": first_id}),
            "previous_response_id",
        ),
    ] {
        let (status, answer) = respond(&stack, &key_c, body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["param"], param, "{answer}");
        assert!(answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retention policy"));
    }
    assert_eq!(
        stack.mock.calls().len(),
        calls,
        "nothing refused reached the provider"
    );

    // Kept in the private database, for the retention's days; every turn billed once.
    let request_id = first_id.replacen("resp_", "req_", 1);
    let days = stack
        .ch(&format!(
            "SELECT dateDiff('day', now(), expires_at) FROM {{db}}_private.conversation_inputs \
             WHERE request_id = '{request_id}'"
        ))
        .await;
    assert!(["29", "30"].contains(&days.trim()), "{days}");
    let billed = stack
        .wait_count(
            "SELECT count() FROM {db}.usage FINAL WHERE team = 'team-a'",
            4,
            WAIT,
        )
        .await;
    assert_eq!(billed, 4);
    stack.stop().await;
}
