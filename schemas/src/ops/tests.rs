use std::time::Duration;

use super::exporter::builder;
use super::*;

#[tokio::test]
async fn flags_and_probes_decide_readiness() {
    let ready = Readiness::default();
    assert!(
        ready.check(Duration::from_millis(50)).await.ready,
        "nothing to wait for"
    );

    ready.expect("keys");
    ready.probe("kafka", || async { Ok(()) });
    let report = ready.check(Duration::from_millis(50)).await;
    assert!(!report.ready);
    assert_eq!(report.not_ready.keys().collect::<Vec<_>>(), ["keys"]);

    ready.set("keys", true);
    assert!(ready.check(Duration::from_millis(50)).await.ready);

    ready.probe("clickhouse", || async {
        Err("connection refused".to_string())
    });
    ready.probe("slow", || async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(())
    });
    let report = ready.check(Duration::from_millis(50)).await;
    assert!(!report.ready);
    assert_eq!(report.not_ready["clickhouse"], "connection refused");
    assert!(report.not_ready["slow"].contains("no answer"), "{report:?}");
    let body = serde_json::to_value(&report).unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(body["not_ready"]["clickhouse"], "connection refused");

    ready.set("keys", false);
    let report = ready.check(Duration::from_millis(50)).await;
    assert!(report.not_ready.contains_key("keys"));
}

#[test]
fn renders_catalog_histograms_with_their_buckets_and_global_labels() {
    let recorder = builder("worker", Some("w-7")).unwrap().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        metrics::histogram!(
            "gen_ai_client_token_usage",
            "gen_ai_token_type" => "input",
            "gen_ai_operation_name" => "chat"
        )
        .record(100.0);
        metrics::histogram!("gen_ai_server_request_duration_seconds").record(0.05);
        metrics::histogram!("sluice_time_in_queue_seconds", "class" => "interactive").record(0.2);
        metrics::counter!("sluice_requests_total", "api" => "chat", "status" => "200", "reason" => "accepted")
            .increment(3);
    });
    let text = handle.render();
    assert!(
        text.contains(r#"gen_ai_client_token_usage_bucket{service="worker",worker="w-7",gen_ai_token_type="input",gen_ai_operation_name="chat",le="256"} 1"#)
            || text.contains(r#"gen_ai_client_token_usage_bucket{gen_ai_token_type="input",gen_ai_operation_name="chat",service="worker",worker="w-7",le="256"} 1"#),
        "{text}"
    );
    for (name, buckets) in BUCKETS {
        if !text.contains(&format!("{name}_bucket")) {
            continue;
        }
        for le in buckets.iter() {
            assert!(
                text.contains(&format!("le=\"{le}\"")),
                "{name} lacks le={le}: {text}"
            );
        }
    }
    assert!(text.contains(r#"le="67108864""#), "{text}");
    assert!(text.contains(r#"le="81.92""#), "{text}");
    assert!(text.contains("gen_ai_client_token_usage_count"), "{text}");
    assert!(
        text.contains("sluice_time_in_queue_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains(r#"reason="accepted"} 3"#), "{text}");
    assert!(text.contains(r#"service="worker""#), "{text}");
}

#[test]
fn catalog_histograms_have_their_standard_buckets() {
    assert_eq!(buckets_for("gen_ai_client_token_usage").unwrap().len(), 14);
    assert_eq!(
        buckets_for("gen_ai_server_time_to_first_token_seconds").unwrap()[0],
        0.001
    );
    assert_eq!(
        buckets_for("gen_ai_server_time_per_output_token_seconds")
            .unwrap()
            .last(),
        Some(&2.5)
    );
    assert!(buckets_for("sluice_requests_total").is_none());
}

#[test]
fn topic_labels_are_logical_and_bounded() {
    assert_eq!(logical_topic("sluice.requests.interactive"), "requests");
    assert_eq!(logical_topic("t-1a2b.requests.batch.team.acme"), "requests");
    assert_eq!(logical_topic("sluice.results"), "results");
    assert_eq!(logical_topic("a.b.dead-letter"), "dead-letter");
    assert_eq!(logical_topic("whatever"), "other");
}

#[tokio::test]
async fn ops_router_serves_health_readiness_and_metrics() {
    let config = OpsConfig {
        listen: Some("127.0.0.1:0".into()),
    };
    let ready = Readiness::default();
    ready.expect("partitions");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let addr = serve(
        &config,
        "worker",
        Some("w-test"),
        ready.clone(),
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap()
    .unwrap();
    let get = |path: &str| {
        let path = path.to_string();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    let not_ready = get("/readyz").await;
    assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
    assert!(not_ready.contains(r#""partitions""#), "{not_ready}");
    ready.set("partitions", true);
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    metrics::counter!("sluice_fallbacks_total", "from" => "a", "to" => "b").increment(1);
    let text = get("/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("sluice_fallbacks_total"), "{text}");
    let _ = stop.send(());
    assert_eq!(
        serve(&OpsConfig::default(), "worker", None, ready, async {})
            .await
            .unwrap(),
        None
    );
}
