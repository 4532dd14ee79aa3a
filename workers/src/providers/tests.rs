use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};

use super::*;
use crate::error::ProviderError;

/// A server at `/v1/messages` answering `status` with `body` and `location`, recording
/// the `x-api-key` of each request it gets.
async fn server(
    status: u16,
    body: &'static str,
    location: Option<String>,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let record = Arc::clone(&record);
        let location = location.clone();
        async move {
            let key = headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            record.lock().unwrap().push(key);
            let mut response = axum::http::Response::builder()
                .status(status)
                .header("content-type", "application/json");
            if let Some(l) = location {
                response = response.header("location", l);
            }
            response.body(axum::body::Body::from(body)).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn anthropic(base_url: &str, key_env: &str) -> anthropic::Anthropic {
    let config: anthropic::AnthropicConfig = serde_json::from_value(serde_json::json!({
        "base_url": base_url, "api_key_env": key_env
    }))
    .unwrap();
    anthropic::Anthropic::new(&config, "claude-x", http_client(4).unwrap())
}

fn request() -> Map<String, Value> {
    serde_json::from_value(serde_json::json!({
        "model": "claude-x", "messages": [{"role": "user", "content": "hi"}]
    }))
    .unwrap()
}

#[test]
fn provider_error_bodies_not_in_the_provider_shape_pass_as_they_are() {
    // A body that is not Anthropic's shape passes as it is.
    assert_eq!(
        anthropic::map_error(502, "<html>bad gateway</html>").0,
        "<html>bad gateway</html>"
    );
    assert!(ProviderError::Status {
        status: 529,
        body: String::new(),
        retry_after: None
    }
    .is_retriable());
}

#[tokio::test]
async fn provider_calls_carry_the_callers_well_formed_traceparent_only() {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let record = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let record = Arc::clone(&record);
        async move {
            let traceparent = headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            record.lock().unwrap().push(traceparent);
            (
                [("content-type", "application/json")],
                r#"{"id":"m","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}"#,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    std::env::set_var("SLUICE_TEST_TRACE_KEY", "sk-ant-test");
    let client = anthropic(&url, "SLUICE_TEST_TRACE_KEY");
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let timeout = Duration::from_secs(5);
    for traceparent in [Some(caller), Some("not-a-traceparent"), None] {
        // Only the headers that reached the provider matter here.
        let _ = with_traceparent(traceparent, client.complete(request(), timeout)).await;
    }
    let _ = client.complete(request(), timeout).await;
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [Some(caller.to_string()), None, None, None]
    );
}

#[tokio::test]
async fn a_redirect_does_not_carry_the_provider_key_anywhere() {
    std::env::set_var("SLUICE_TEST_REDIRECT_KEY", "sk-ant-api03-secret-key");
    let (elsewhere, stolen) = server(200, "{}", None).await;
    let (provider, seen) = server(307, "{}", Some(format!("{elsewhere}/v1/messages"))).await;
    let client = anthropic(&provider, "SLUICE_TEST_REDIRECT_KEY");
    let outcome = client.complete(request(), Duration::from_secs(5)).await;
    assert!(
        matches!(outcome, Err(ProviderError::Status { status: 307, .. })),
        "{outcome:?}"
    );
    assert_eq!(seen.lock().unwrap().as_slice(), ["sk-ant-api03-secret-key"]);
    assert!(
        stolen.lock().unwrap().is_empty(),
        "the Location got nothing"
    );
}

#[tokio::test]
async fn provider_error_bodies_reach_the_caller_without_key_hints_or_org_ids() {
    std::env::set_var("SLUICE_TEST_SCRUB_KEY", "sk-ant-api03-real-key");
    let (provider, _) = server(
        401,
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key sk-ant-api03-rea***key for organization org-Zx81ab3CDEfgHIjkLMno4pQr"}}"#,
        None,
    )
    .await;
    let client = anthropic(&provider, "SLUICE_TEST_SCRUB_KEY");
    match client.complete(request(), Duration::from_secs(5)).await {
        Err(ProviderError::Status {
            status: 401, body, ..
        }) => {
            assert!(!body.contains("api03"), "{body}");
            assert!(!body.contains("Zx81ab3"), "{body}");
            let parsed: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(parsed["error"]["type"], "authentication_error", "{body}");
        }
        other => panic!("expected the provider's 401, got {other:?}"),
    }
}

#[tokio::test]
async fn an_openai_deployment_with_the_responses_api_reads_a_response_object_as_a_chat_completion()
{
    let answer = r#"{"id": "resp_1", "object": "response", "created_at": 5, "status": "completed",
        "model": "gpt-5-mini", "output": [{"type": "message", "role": "assistant",
        "content": [{"type": "output_text", "text": "Hi there"}]}],
        "usage": {"input_tokens": 8, "output_tokens": 2, "total_tokens": 10}}"#;
    let (url, _) = server(200, answer, None).await;
    let config: openai::OpenAiConfig = serde_json::from_value(serde_json::json!({
        "base_url": format!("{url}/v1"), "api": "responses"
    }))
    .unwrap();
    let provider = openai::OpenAi::new(&config, "gpt-5-mini", http_client(4).unwrap());
    let completion = provider
        .complete(request(), Duration::from_secs(5))
        .await
        .unwrap();
    let body: Value = serde_json::from_str(&completion.body).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hi there");
    assert_eq!(
        (
            completion.usage.prompt_tokens,
            completion.usage.completion_tokens
        ),
        (8, 2)
    );
    // A chat field the Responses API has no form for is refused without a call.
    let mut stop = request();
    stop.insert("stop".into(), serde_json::json!(["."]));
    let refused = provider.complete(stop, Duration::from_secs(5)).await;
    assert!(
        matches!(refused, Err(ProviderError::Unsupported(why)) if why.contains("`stop`")),
        "{refused:?}"
    );
    // An unknown api is a config error.
    assert!(serde_json::from_value::<openai::OpenAiConfig>(
        serde_json::json!({"base_url": "http://x/v1", "api": "assistants"})
    )
    .is_err());
}
