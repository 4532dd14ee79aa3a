//! Routing strategies end to end (docs/scheduling.md#routing): the latency strategy moves
//! traffic off a slowed deployment and back once it recovers; the cost strategy uses the
//! cheap deployment until its tokens per minute are spent, then the next; per-request hints
//! narrow and steer the choice and cannot be smuggled in through attributes. Each choice's
//! reason is in ClickHouse (`results.routing_reason`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_tests::mock::{Behaviour, Latency, MockProvider};

use crate::common::*;

fn body(model: &str, sluice: Value) -> Value {
    json!({
        "model": model,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "route me"}],
        "sluice": sluice,
    })
}

async fn ask(stack: &Stack, model: &str, sluice: Value) -> (u16, Value, String) {
    stack.chat_with_id(KEY_A, &body(model, sluice)).await
}

/// A request the ingress refuses (no request id is made).
async fn refused(stack: &Stack, sluice: Value) -> (u16, Value) {
    stack
        .post("/v1/chat/completions", KEY_A, body("listed", sluice))
        .await
}

fn slowed(latency: Duration) -> Behaviour {
    Behaviour {
        latency: Latency::Fixed(latency),
        ..Behaviour::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latency_moves_traffic_off_a_slowed_deployment_and_back_after_it_recovers() {
    let b = MockProvider::start(Behaviour::default()).await.unwrap();
    let stack = Stack::start(StackOptions {
        extra_worker_toml: format!(
            r#"
[routing]
latency_decay_ms = 2000
[routing.models]
quick = "latency"

[[deployments]]
name = "quick-a"
model = "quick"
provider = {{ type = "openai", base_url = "{{origin}}/v1" }}

[[deployments]]
name = "quick-b"
model = "quick"
provider = {{ type = "openai", base_url = "{b}/v1" }}

[pricing]
free_models = ["quick"]
"#,
            b = b.origin(),
        ),
        extra_models: vec!["quick".into()],
        ..StackOptions::default()
    })
    .await;
    let a = &stack.mock;

    // Both fast: both are measured.
    for _ in 0..10 {
        let (status, body, _) = ask(&stack, "quick", json!({})).await;
        assert_eq!(status, 200, "{body}");
    }

    // A slows to 1 s: after at most one slow answer it is passed over. Its average then
    // needs ~2 s x ln(1000 / b's few ms) ≈ 12 s to decay below b's, longer than these take.
    a.set_behaviour(slowed(Duration::from_secs(1)));
    let (a0, b0) = (a.call_count(), b.call_count());
    let mut last = String::new();
    for _ in 0..20 {
        let (status, body, id) = ask(&stack, "quick", json!({})).await;
        assert_eq!(status, 200, "{body}");
        last = id;
    }
    let to_a = a.call_count() - a0;
    assert!(to_a <= 1, "the slowed deployment got {to_a} of 20");
    assert!(b.call_count() - b0 >= 19);
    let reason = stack.result_row(&last, "deployment, routing_reason").await;
    assert!(
        reason.starts_with("quick-b\tlatency: quick-b ("),
        "the reason names the choice: {reason}"
    );

    // A recovers: its decayed average brings it a probe, the probe's fast answer brings its
    // share back. Bounded at 60 s of requests; how long it took is printed.
    a.set_behaviour(Behaviour::default());
    let recovered = Instant::now();
    let a1 = a.call_count();
    while a.call_count() - a1 < 5 && recovered.elapsed() < Duration::from_secs(60) {
        let (status, body, _) = ask(&stack, "quick", json!({})).await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        a.call_count() - a1 >= 5,
        "the recovered deployment got {} calls in 60 s",
        a.call_count() - a1
    );
    eprintln!(
        "latency strategy: the recovered deployment had 5 calls again after {:?}",
        recovered.elapsed()
    );
    stack.stop().await;
}

fn cost_toml(dear: &MockProvider) -> String {
    format!(
        r#"
[[deployments]]
name = "cheap-1"
model = "cheap-m"
limits = {{ tokens_per_minute = 600 }}
provider = {{ type = "openai", base_url = "{{origin}}/v1" }}

[[deployments]]
name = "dear-1"
model = "dear-m"
provider = {{ type = "openai", base_url = "{dear}/v1" }}

[[routes]]
name = "thrifty"
models = ["dear-m", "cheap-m"]
strategy = "cost"

[[routes]]
name = "listed"
models = ["dear-m", "cheap-m"]

[[prices]]
model = "cheap-m"
input_per_million = 0.1
output_per_million = 0.4

[[prices]]
model = "dear-m"
input_per_million = 10.0
output_per_million = 30.0
"#,
        dear = dear.origin(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cost_uses_the_cheap_deployment_until_its_tokens_run_out_and_hints_steer_it() {
    let dear = MockProvider::start(Behaviour::default()).await.unwrap();
    let stack = Stack::start(StackOptions {
        // Every answer uses its whole 50-token cap: the estimate is the usage.
        behaviour: Behaviour {
            completion_tokens: 50,
            ..Behaviour::default()
        },
        extra_worker_toml: cost_toml(&dear),
        extra_models: vec!["thrifty".into(), "listed".into()],
        ..StackOptions::default()
    })
    .await;
    let cheap = &stack.mock;

    // Listed first, the dear model is first on the plain route.
    let (status, body, id) = ask(&stack, "listed", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(stack
        .result_row(&id, "deployment, routing_reason")
        .await
        .starts_with("dear-1\tweighted: dear-1 drawn"));
    // A caller's own `sluice.route` attribute is dropped: this would refuse every deployment.
    let smuggled = json!({"attributes": {"sluice.route": "{\"max_cost_per_mtok\": 0}"}});
    let (status, body, _) = ask(&stack, "listed", smuggled).await;
    assert_eq!(status, 200, "{body}");
    // prefer = cost on the same route: the cheap one.
    let (status, body, id) = ask(&stack, "listed", json!({"route": {"prefer": "cost"}})).await;
    assert_eq!(status, 200, "{body}");
    let row = stack.result_row(&id, "deployment, routing_reason").await;
    assert!(
        row.starts_with("cheap-1\thint prefer=cost; cost: cheap-1 at $0.0000"),
        "{row}"
    );
    // A price cap no deployment meets: 400 in OpenAI's shape, nothing called.
    let calls = (cheap.call_count(), dear.call_count());
    let (status, body, _) = ask(
        &stack,
        "listed",
        json!({"route": {"max_cost_per_mtok": 0.01}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "route_hint_unsatisfiable", "{body}");
    assert_eq!(body["error"]["param"], "sluice.route", "{body}");
    assert_eq!((cheap.call_count(), dear.call_count()), calls);
    // A cap only the cheap one meets.
    let (status, body, id) = ask(
        &stack,
        "listed",
        json!({"route": {"max_cost_per_mtok": 1.0}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(stack.result_row(&id, "deployment").await == "cheap-1");
    // Hints out of bounds are the ingress's 400, naming the field.
    for (hint, param) in [
        (json!({"max_latency_ms": 0}), "sluice.route.max_latency_ms"),
        (
            json!({"max_cost_per_mtok": -2}),
            "sluice.route.max_cost_per_mtok",
        ),
    ] {
        let (status, body) = refused(&stack, json!({ "route": hint })).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    let (status, body) = refused(&stack, json!({"route": {"region": "eu"}})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "sluice", "{body}");

    // The cost route: cheap first, until its 600 tokens a minute have no room for another
    // request (each may use ~10 prompt + 50 completion tokens); then the dear one, saying why.
    let (cheap0, dear0) = (cheap.call_count(), dear.call_count());
    let mut moved = None;
    for n in 0..80 {
        let (status, body, id) = ask(&stack, "thrifty", json!({})).await;
        assert_eq!(status, 200, "{body}");
        let row = stack.result_row(&id, "deployment, routing_reason").await;
        if n == 0 {
            assert!(row.starts_with("cheap-1\tcost: cheap-1 at $"), "{row}");
        }
        if row.starts_with("dear-1") {
            moved = Some((n, row));
            break;
        }
    }
    let (n, row) = moved.expect("the dear deployment took over once the cheap one was spent");
    assert!(
        row.contains("cheaper cheap-1 ($0.0000") && row.ends_with("has no headroom"),
        "{row}"
    );
    assert_eq!(cheap.call_count() - cheap0, n as u64, "cheap until then");
    assert_eq!(dear.call_count() - dear0, 1);
    assert!(
        n >= 5,
        "600 tokens a minute hold several requests first: {n}"
    );
    eprintln!("cost strategy: {n} requests on the cheap deployment before its TPM ran out");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_busy_keeps_new_requests_off_a_deployment_whose_calls_pile_up() {
    let free = MockProvider::start(Behaviour::default()).await.unwrap();
    let stack = Stack::start(StackOptions {
        // The stack's mock is the busy one: each call holds for 5 s.
        behaviour: slowed(Duration::from_secs(5)),
        extra_worker_toml: format!(
            r#"
[routing.models]
busy = "least-busy"

[[deployments]]
name = "busy-held"
model = "busy"
provider = {{ type = "openai", base_url = "{{origin}}/v1" }}

[[deployments]]
name = "busy-free"
model = "busy"
provider = {{ type = "openai", base_url = "{free}/v1" }}

[pricing]
free_models = ["busy"]
"#,
            free = free.origin(),
        ),
        extra_models: vec!["busy".into()],
        ..StackOptions::default()
    })
    .await;
    let held = &stack.mock;
    // 20 requests, each sent once the one before has reached a provider, and, when the free
    // deployment took it, been answered: every choice then sees the held deployment's calls
    // in flight and none on the free one. Only a tie (nothing in flight anywhere: the first
    // request) can go to the held one. Weighted, about half would wait 5 s there.
    let mut held_calls = Vec::new();
    let mut last = String::new();
    for _ in 0..20 {
        let (before, base) = (held.call_count(), stack.base.clone());
        let mut call = tokio::spawn(async move {
            let response = reqwest::Client::new()
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(KEY_A)
                .json(&body("busy", json!({})))
                .send()
                .await
                .expect("ingress answers");
            let id = response.headers()["x-sluice-request-id"]
                .to_str()
                .unwrap()
                .to_string();
            (response.status().as_u16(), id)
        });
        let watched = &call;
        let went_held = eventually(Duration::from_secs(60), move || async move {
            if held.call_count() > before {
                return Some(true);
            }
            watched.is_finished().then_some(false)
        })
        .await
        .expect("the request reached a deployment");
        if went_held {
            held_calls.push(call);
        } else {
            let (status, id) = (&mut call).await.unwrap();
            assert_eq!(status, 200);
            last = id;
        }
    }
    for call in held_calls {
        assert_eq!(call.await.unwrap().0, 200);
    }
    assert!(
        held.call_count() <= 2,
        "the held deployment got {} of 20",
        held.call_count()
    );
    assert!(free.call_count() >= 18);
    let row = stack.result_row(&last, "deployment, routing_reason").await;
    assert!(
        row.starts_with("busy-free\tleast-busy: busy-free with 0 in flight per 1 of capacity")
            || row.starts_with("busy-free\tleast-busy: busy-free with 1 in flight"),
        "{row}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn headroom_spreads_requests_by_what_each_deployments_limits_have_left() {
    let small = MockProvider::start(Behaviour {
        completion_tokens: 50,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            completion_tokens: 50,
            ..Behaviour::default()
        },
        extra_worker_toml: format!(
            r#"
[routing.models]
roomy = "headroom"

[[deployments]]
name = "roomy-big"
model = "roomy"
limits = {{ tokens_per_minute = 6000 }}
provider = {{ type = "openai", base_url = "{{origin}}/v1" }}

[[deployments]]
name = "roomy-small"
model = "roomy"
limits = {{ tokens_per_minute = 3000 }}
provider = {{ type = "openai", base_url = "{small}/v1" }}

[pricing]
free_models = ["roomy"]
"#,
            small = small.origin(),
        ),
        extra_models: vec!["roomy".into()],
        ..StackOptions::default()
    })
    .await;
    let big = &stack.mock;
    // Each request uses ~60 tokens of the deployment it goes to; the one with the larger
    // share left is chosen, so the big one takes about two thirds.
    let mut last = String::new();
    for _ in 0..30 {
        let (status, body, id) = ask(&stack, "roomy", json!({})).await;
        assert_eq!(status, 200, "{body}");
        last = id;
    }
    let (to_big, to_small) = (big.call_count(), small.call_count());
    assert_eq!(to_big + to_small, 30);
    assert!(
        (16..=24).contains(&to_big),
        "big {to_big}, small {to_small}: about 2:1"
    );
    let row = stack.result_row(&last, "routing_reason").await;
    assert!(row.starts_with("headroom: roomy-"), "{row}");
    assert!(row.contains("% of its limits left"), "{row}");
    eprintln!("headroom strategy: 30 requests split {to_big}:{to_small} over TPM 6000:3000");
    stack.stop().await;
}
