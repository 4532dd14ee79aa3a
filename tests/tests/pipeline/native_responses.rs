//! An OpenAI deployment that speaks the Responses API (`api = "responses"`), end to end:
//! whichever API the caller used, the mock is called at `/v1/responses` with the caller's
//! request in that API's form, its answer is the caller's (compared with the same call
//! straight to the mock), and its usage is what is billed.

use serde_json::{json, Value};
use sluice_tests::mock::Behaviour;

use crate::common::*;

const NATIVE: &str = "native-mini";
const NATIVE_IN: f64 = 0.25;
const NATIVE_OUT: f64 = 2.0;
/// An Azure OpenAI deployment called at Azure's Responses API.
const AZURE: &str = "azure-native";

async fn stack() -> Stack {
    Stack::start(StackOptions {
        behaviour: Behaviour {
            completion_tokens: 7,
            ..Behaviour::default()
        },
        extra_worker_toml: format!(
            r#"
[[deployments]]
name = "mock-native"
model = "{NATIVE}"
provider = {{ type = "openai", base_url = "{{origin}}/v1", api = "responses", model = "gpt-5-mini" }}

[[deployments]]
name = "azure-native"
model = "{AZURE}"
provider = {{ type = "azure", endpoint = "{{origin}}", deployment = "gpt-5-mini-prod", api = "responses" }}

[[prices]]
model = "{NATIVE}"
input_per_million = {NATIVE_IN}
output_per_million = {NATIVE_OUT}

[pricing]
free_models = ["{AZURE}"]
"#
        ),
        extra_models: vec![NATIVE.to_string(), AZURE.to_string()],
        ..StackOptions::default()
    })
    .await
}

fn weather() -> Value {
    json!({"type": "function", "name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}})
}

/// The last call the mock got: it was at the Responses API; its body.
fn last_native_call(stack: &Stack) -> Value {
    last_call_at(stack, "/v1/responses")
}

fn last_call_at(stack: &Stack, path: &str) -> Value {
    let call = stack.mock.calls().pop().expect("the mock was called");
    assert_eq!(call.path, path);
    call.body.expect("a JSON body")
}

/// The mock's answer to `body` asked directly (without streaming).
async fn ask_directly(stack: &Stack, mut body: Value) -> Value {
    body.as_object_mut().unwrap().remove("stream");
    let (status, answer) = json_answer(
        stack
            .http
            .post(format!("{}/responses", stack.mock.base_url()))
            .json(&body),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|part| part["text"].as_str().map(str::to_string))
        .collect()
}

fn cost_nanos(prompt: u64, completion: u64) -> i64 {
    (prompt as f64 * NATIVE_IN * 1000.0 + completion as f64 * NATIVE_OUT * 1000.0).round() as i64
}

async fn billed(stack: &Stack, id: &str, usage: &Value) {
    let (input, output) = (
        usage["input_tokens"].as_u64().unwrap(),
        usage["output_tokens"].as_u64().unwrap(),
    );
    assert!(input > 0 && output > 0, "{usage}");
    assert_eq!(
        stack
            .usage_row(
                id,
                "model, provider, prompt_tokens, completion_tokens, cost_nanos"
            )
            .await,
        format!(
            "{NATIVE}\topenai\t{input}\t{output}\t{}",
            cost_nanos(input, output)
        )
    );
}

async fn post_with_id(stack: &Stack, path: &str, body: &Value) -> (u16, Value, String) {
    let response = stack
        .http
        .post(format!("{}{path}", stack.base))
        .bearer_auth(KEY_A)
        .json(body)
        .send()
        .await
        .unwrap();
    let id = response
        .headers()
        .get("x-sluice-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap(), id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_native_responses_deployment_gets_the_callers_request_and_its_answer_is_billed() {
    let stack = stack().await;
    let request = json!({"model": NATIVE, "instructions": "Be terse.", "input": "Weather in Paris",
                         "tools": [weather()], "tool_choice": {"type": "function", "name": "get_weather"},
                         "max_output_tokens": 50, "temperature": 0.5});
    let (status, answer, id) = post_with_id(&stack, "/v1/responses", &request).await;
    assert_eq!(status, 200, "{answer}");

    // The provider got the caller's request in the Responses form, for its own model name.
    let sent = last_native_call(&stack);
    assert_eq!(
        sent,
        json!({"model": "gpt-5-mini", "max_output_tokens": 50, "temperature": 0.5, "store": false,
               "input": [{"type": "message", "role": "system", "content": "Be terse."},
                         {"type": "message", "role": "user", "content": "Weather in Paris"}],
               "tools": [weather()], "tool_choice": {"type": "function", "name": "get_weather"}})
    );

    // The caller's answer is the provider's.
    let direct = ask_directly(&stack, sent).await;
    assert_eq!(direct["output"][0]["type"], "function_call", "{direct}");
    let (call, expected) = (&answer["output"][0], &direct["output"][0]);
    assert_eq!(call["type"], "function_call", "{answer}");
    // The call's id is the provider's (the mock makes a new one per call).
    assert!(
        call["call_id"].as_str().unwrap().starts_with("call_"),
        "{call}"
    );
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["arguments"], expected["arguments"]);
    assert_eq!(
        answer["usage"]["input_tokens"],
        direct["usage"]["input_tokens"]
    );
    assert_eq!(
        answer["usage"]["output_tokens"],
        direct["usage"]["output_tokens"]
    );
    assert_eq!(
        answer["id"],
        format!("resp_{}", id.trim_start_matches("req_"))
    );
    billed(&stack, &id, &direct["usage"]).await;

    // Text, and the function's output sent back: the same conversation reaches the provider.
    let follow = json!({"model": NATIVE, "tools": [weather()], "input": [
        {"role": "user", "content": "Weather in Paris"},
        {"type": "function_call", "call_id": call["call_id"], "name": "get_weather",
         "arguments": call["arguments"]},
        {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}]});
    let (status, answer, _) = post_with_id(&stack, "/v1/responses", &follow).await;
    assert_eq!(status, 200, "{answer}");
    let sent = last_native_call(&stack);
    assert_eq!(sent["input"][1]["type"], "function_call");
    assert_eq!(
        sent["input"][2],
        json!({"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"})
    );
    let direct = ask_directly(&stack, sent).await;
    assert!(!output_text(&direct).is_empty(), "{direct}");
    assert_eq!(output_text(&answer), output_text(&direct));
    assert_eq!(answer["status"], "completed");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_native_responses_deployment_streams_and_serves_chat_callers() {
    let stack = stack().await;
    let question = "Tell me about the Danube";

    // A streamed /v1/responses: the text and usage of the provider's answer.
    let response = stack
        .http
        .post(format!("{}/v1/responses", stack.base))
        .bearer_auth(KEY_A)
        .json(&json!({"model": NATIVE, "stream": true, "input": question}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-sluice-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let events = sse_events(&response.text().await.unwrap());
    let sent = last_native_call(&stack);
    assert_eq!(sent["stream"], true, "{sent}");
    let direct = ask_directly(&stack, sent).await;
    let deltas: String = events
        .iter()
        .filter(|(name, _)| name == "response.output_text.delta")
        .map(|(_, data)| {
            serde_json::from_str::<Value>(data).unwrap()["delta"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(deltas, output_text(&direct));
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    let completed: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        completed["response"]["usage"]["output_tokens"],
        direct["usage"]["output_tokens"]
    );
    billed(&stack, &id, &direct["usage"]).await;

    // A chat completions caller: the same deployment, the same Responses call.
    let chat_body = json!({"model": NATIVE, "max_tokens": 30,
                           "messages": [{"role": "user", "content": question}]});
    let (status, chat, id) = post_with_id(&stack, "/v1/chat/completions", &chat_body).await;
    assert_eq!(status, 200, "{chat}");
    let sent = last_native_call(&stack);
    assert_eq!(sent["max_output_tokens"], 30);
    let direct = ask_directly(&stack, sent).await;
    assert_eq!(
        chat["choices"][0]["message"]["content"],
        output_text(&direct).as_str()
    );
    assert_eq!(chat["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        chat["usage"]["completion_tokens"],
        direct["usage"]["output_tokens"]
    );
    billed(&stack, &id, &direct["usage"]).await;

    // Streamed to a chat caller: chunks with the same text.
    let response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&json!({"model": NATIVE, "stream": true,
                      "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": question}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, output_text(&direct));

    // A chat field the Responses API has no form for is refused by name, without a call.
    let calls = stack.mock.calls().len();
    let (status, refused) = stack
        .post(
            "/v1/chat/completions",
            KEY_A,
            json!({"model": NATIVE, "stop": ["."], "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "unsupported_model");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`stop`"),
        "{refused}"
    );
    // The refusal is the worker's result: any call would have been made before it.
    assert_eq!(stack.mock.calls().len(), calls, "no provider call");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_azure_deployment_is_called_at_azures_responses_api() {
    let stack = stack().await;
    let chat = json!({"model": AZURE, "messages": [{"role": "user", "content": "Name a lake"}]});
    let (status, answer, _) = post_with_id(&stack, "/v1/chat/completions", &chat).await;
    assert_eq!(status, 200, "{answer}");
    // Azure's v1 surface: no deployment in the path, the deployment named as the model; the
    // cap is the one the budget reserved ([budget] default_completion_tokens).
    let sent = last_call_at(&stack, "/openai/v1/responses");
    assert_eq!(
        sent,
        json!({"model": "gpt-5-mini-prod", "store": false, "max_output_tokens": 4096,
               "input": [{"type": "message", "role": "user", "content": "Name a lake"}]})
    );
    let direct = ask_directly(&stack, sent).await;
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        output_text(&direct).as_str()
    );
    assert_eq!(
        answer["usage"]["prompt_tokens"],
        direct["usage"]["input_tokens"]
    );
    stack.stop().await;
}
