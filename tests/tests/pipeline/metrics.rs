//! The ops listeners (issue 15): a real worker process and the in-process ingress serve
//! `/metrics`, `/healthz` and `/readyz` on ports of their own, and the metric catalog's
//! names move with traffic. (In this test process the ingress's recorder also holds the
//! in-process sink's series, labelled `service="ingress"`; the worker is its own process.)

use std::sync::OnceLock;
use std::time::Duration;

use super::common::*;

static INGRESS_OPS: OnceLock<String> = OnceLock::new();

fn ingress_ops(config: &mut sluice_ingress::Config) {
    config.ops.listen = INGRESS_OPS.get().cloned();
}

/// The sum of the values of `name`'s series whose labels contain every one of `labels`.
fn value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn get(http: &reqwest::Client, url: String) -> (u16, String) {
    match http.get(url).timeout(Duration::from_secs(5)).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ops_listeners_serve_readiness_and_the_catalog() {
    let ingress_port = free_port();
    INGRESS_OPS
        .set(format!("127.0.0.1:{ingress_port}"))
        .expect("one test sets it");
    let stack = Stack::start(StackOptions {
        worker: false,
        ingress_config: Some(ingress_ops),
        ..StackOptions::default()
    })
    .await;
    let http = reqwest::Client::new();
    let ingress_ops = format!("http://127.0.0.1:{ingress_port}");

    let worker_port = free_port();
    let config = std::env::temp_dir().join(format!("{}-ops-worker.toml", stack.prefix));
    std::fs::write(
        &config,
        format!(
            "{}\n[ops]\nlisten = \"127.0.0.1:{worker_port}\"\n",
            stack.worker_toml("ops-w1")
        ),
    )
    .unwrap();
    let mut worker = std::process::Command::new(workspace_bin("sluice-worker"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let worker_ops = format!("http://127.0.0.1:{worker_port}");

    // Liveness at once; readiness once Kafka answers and the groups are joined.
    let live = eventually(Duration::from_secs(20), || async {
        (get(&http, format!("{worker_ops}/healthz")).await.0 == 200).then_some(())
    })
    .await;
    assert!(live.is_some(), "worker /healthz never answered 200");
    let ready = eventually(Duration::from_secs(60), || async {
        (get(&http, format!("{worker_ops}/readyz")).await.0 == 200).then_some(())
    })
    .await;
    let (status, body) = get(&http, format!("{worker_ops}/readyz")).await;
    assert!(ready.is_some(), "worker /readyz: {status} {body}");
    let (status, body) = get(&http, format!("{ingress_ops}/readyz")).await;
    assert_eq!(status, 200, "ingress /readyz: {body}");
    assert!(body.contains(r#""ready":true"#), "{body}");
    // The tenant listener serves none of it.
    assert_ne!(
        get(&http, format!("{}/metrics", stack.base)).await.0,
        200,
        "metrics must not be on the tenant port"
    );

    let (_, before) = get(&http, format!("{ingress_ops}/metrics")).await;
    let accepted = [r#"api="chat""#, r#"status="200""#, r#"reason="accepted""#];
    let accepted_before = value(&before, "sluice_requests_total", &accepted);
    for i in 0..3 {
        let (status, body) = stack
            .post("/v1/chat/completions", KEY_A, chat(&format!("metrics {i}")))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = stack
        .post("/v1/chat/completions", "sk-wrong", chat("no"))
        .await;
    assert_eq!(status, 401);

    let (_, text) = get(&http, format!("{ingress_ops}/metrics")).await;
    assert_eq!(
        value(&text, "sluice_requests_total", &accepted) - accepted_before,
        3.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            "sluice_requests_total",
            &[r#"status="401""#, r#"reason="invalid_api_key""#]
        ) >= 1.0,
        "{text}"
    );
    assert!(text.contains(r#"service="ingress""#), "{text}");
    // The response cache: a request opted in, asked twice, is stored once and hit once.
    let mut cached = chat("metrics cached");
    cached["sluice"] = serde_json::json!({"cache": {"ttl_s": 60}});
    for _ in 0..2 {
        let (status, body) = stack
            .post("/v1/chat/completions", KEY_A, cached.clone())
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, cache_text) = get(&http, format!("{ingress_ops}/metrics")).await;
    for (name, labels) in [
        (
            "sluice_cache_lookups_total",
            [r#"backend="memory""#, r#"outcome="hit""#],
        ),
        (
            "sluice_cache_lookups_total",
            [r#"backend="memory""#, r#"outcome="miss""#],
        ),
        (
            "sluice_cache_stores_total",
            [r#"backend="memory""#, r#"outcome="stored""#],
        ),
    ] {
        assert!(
            value(&cache_text, name, &labels) >= 1.0,
            "{name} {labels:?}: {cache_text}"
        );
    }
    assert!(
        value(
            &text,
            "sluice_enqueued_requests_total",
            &[r#"class="standard""#, r#"team="team-a""#]
        ) >= 3.0,
        "{text}"
    );
    assert!(
        value(&text, "sluice_enqueued_tokens_total", &[]) > 0.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            "sluice_kafka_produce_duration_seconds_count",
            &[r#"topic="requests""#]
        ) >= 3.0,
        "{text}"
    );
    assert!(
        text.contains("sluice_request_duration_seconds_bucket"),
        "{text}"
    );

    // The worker's own process: GenAI histograms with its global labels.
    // The worker records a produce once Kafka acked it, which may be after the caller had
    // its answer (the reply was read by then): wait for the last result's to be counted.
    let text = eventually(Duration::from_secs(10), || async {
        let (_, text) = get(&http, format!("{worker_ops}/metrics")).await;
        let counted = value(
            &text,
            "sluice_kafka_produce_duration_seconds_count",
            &[r#"topic="results""#],
        );
        (counted >= 3.0).then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("the worker counted fewer than 3 results produced"));
    let worker_labels = [r#"service="worker""#, r#"worker="ops-w1""#];
    assert!(
        value(
            &text,
            "gen_ai_client_token_usage_count",
            &[
                &worker_labels[..],
                &[
                    r#"gen_ai_token_type="input""#,
                    r#"gen_ai_provider_name="openai""#
                ]
            ]
            .concat()
        ) >= 3.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            "gen_ai_server_request_duration_seconds_count",
            &worker_labels
        ) >= 3.0,
        "{text}"
    );
    assert!(
        text.contains(r#"gen_ai_client_token_usage_bucket"#) && text.contains(r#"le="16777216""#),
        "{text}"
    );
    assert!(
        value(
            &text,
            "sluice_time_in_queue_seconds_count",
            &[r#"class="standard""#]
        ) >= 3.0,
        "{text}"
    );
    assert!(
        value(&text, "sluice_dequeued_tokens_total", &[]) > 0.0,
        "{text}"
    );
    // Routing: which deployment each chain started with, and the latency it measured.
    let deployment = format!(r#"deployment="mock-{MODEL}""#);
    assert!(
        value(
            &text,
            "sluice_routing_decisions_total",
            &[r#"strategy="weighted""#, deployment.as_str()]
        ) >= 3.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            "sluice_deployment_latency_seconds",
            &[deployment.as_str(), r#"kind="answer""#]
        ) > 0.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            "sluice_provider_responses_total",
            &[r#"status="200""#]
        ) >= 3.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            "sluice_kafka_produce_duration_seconds_count",
            &[r#"topic="results""#]
        ) >= 3.0,
        "{text}"
    );
    // Lag gauges appear for the assigned partitions within a refresh or two.
    let lag = eventually(Duration::from_secs(20), || async {
        let (_, text) = get(&http, format!("{worker_ops}/metrics")).await;
        text.contains("sluice_consumer_lag_records{").then_some(())
    })
    .await;
    assert!(
        lag.is_some(),
        "no sluice_consumer_lag_records on the worker"
    );

    // The sink (in this process, so on the ingress's recorder) writes the results.
    let rows = eventually(Duration::from_secs(30), || async {
        let (_, text) = get(&http, format!("{ingress_ops}/metrics")).await;
        (value(
            &text,
            "sluice_sink_rows_inserted_total",
            &[r#"table="results""#],
        ) >= 3.0)
            .then_some(text)
    })
    .await;
    let text = rows.expect("sluice_sink_rows_inserted_total{table=\"results\"} reached 3");
    assert!(
        value(&text, "sluice_sink_insert_duration_seconds_count", &[]) >= 1.0,
        "{text}"
    );

    let _ = worker.kill();
    let _ = worker.wait();
    let _ = std::fs::remove_file(&config);
    stack.stop().await;
}
