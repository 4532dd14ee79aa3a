//! A real Prometheus (Debian's `prometheus`, 1 s scrapes, deploy/prometheus's rules) against a
//! worker process's ops listener on a live stack, queried with PromQL over its HTTP API: the
//! backlog rises under load with the worker slowed and drains after; a provider 429 shows as
//! `sluice_provider_responses_total{status="429"}` and as throttle waits.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sluice_tests::mock::{Behaviour, Failure, Latency};

use crate::catalog::{deploy_dir, prometheus_tool, render_config};
use crate::common::*;

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Prometheus {
    base: String,
    dir: PathBuf,
    http: reqwest::Client,
    _process: Killed,
}

impl Prometheus {
    async fn start(workers: &[String]) -> Prometheus {
        let dir = std::env::temp_dir().join(unique("sluice-prometheus-"));
        std::fs::create_dir_all(dir.join("data")).expect("dir");
        let config = render_config("1s", &[], workers, &[], &[deploy_dir().join("alerts.yml")]);
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let port = free_port();
        let mut command = prometheus_tool("prometheus");
        command
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let process = Killed(command.spawn().expect("prometheus starts"));
        let prometheus = Prometheus {
            base: format!("http://127.0.0.1:{port}"),
            dir,
            http: reqwest::Client::new(),
            _process: process,
        };
        let ready = eventually(Duration::from_secs(30), || async {
            let r = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.base))
                .send()
                .await;
            r.ok().filter(|r| r.status().is_success()).map(|_| ())
        })
        .await;
        assert!(ready.is_some(), "prometheus not ready");
        prometheus
    }

    /// The first sample of an instant query, if any.
    async fn value(&self, promql: &str) -> Option<f64> {
        let body: Value = self
            .http
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", promql)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Polls `promql` until `want` holds for its value.
    async fn until(
        &self,
        promql: &str,
        limit: Duration,
        want: impl Fn(f64) -> bool,
    ) -> Option<f64> {
        eventually(limit, || async {
            self.value(promql).await.filter(|v| want(*v))
        })
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_sees_the_backlog_rise_and_drain_and_a_provider_429_as_a_throttle() {
    let stack = Stack::start(StackOptions {
        worker: false,
        // A slow worker: 2 in flight at 400 ms each, about 5 requests a second.
        max_in_flight: 2,
        behaviour: Behaviour {
            latency: Latency::Fixed(Duration::from_millis(400)),
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    let ops = format!("127.0.0.1:{}", free_port());
    let config = std::env::temp_dir().join(format!("{}-ops-worker.toml", stack.prefix));
    std::fs::write(&config, stack.worker_toml("ops-w1")).expect("config");
    let worker = Killed(
        Command::new(workspace_bin("sluice-worker"))
            .arg("--config")
            .arg(&config)
            .env("SLUICE_OPS_LISTEN", &ops)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("worker starts"),
    );
    let prometheus = Prometheus::start(std::slice::from_ref(&ops)).await;
    let up = prometheus
        .until(r#"up{job="sluice-worker"}"#, Duration::from_secs(60), |v| {
            v == 1.0
        })
        .await;
    assert_eq!(up, Some(1.0), "the worker's /metrics is not scraped");
    // The worker holds its partitions: the backlog series exist.
    let assigned = prometheus
        .until(
            "sum(sluice:backlog_records:class)",
            Duration::from_secs(60),
            |v| v >= 0.0,
        )
        .await;
    assert!(assigned.is_some(), "no consumer lag exported");

    // Load: 150 async requests, ~30 s of work for this worker.
    let ids = stack.submit_many(150, KEY_A).await;
    let peak = prometheus
        .until(
            "max_over_time(sum(sluice:backlog_records:class)[1m:1s])",
            Duration::from_secs(30),
            |v| v >= 50.0,
        )
        .await;
    assert!(peak.is_some(), "the backlog never rose to 50 records");
    let drained = prometheus
        .until(
            "sum(sluice:backlog_records:class)",
            Duration::from_secs(120),
            |v| v == 0.0,
        )
        .await;
    assert_eq!(drained, Some(0.0), "the backlog did not drain");
    let time_in_queue = prometheus
        .value(r#"sum(sluice_time_in_queue_seconds_count{class="standard"})"#)
        .await
        .unwrap_or(0.0);
    assert!(time_in_queue >= ids.len() as f64, "{time_in_queue}");

    // A provider 429: counted by status, and the governor makes the retry wait.
    stack.mock.fail_next([
        Failure::rate_limited(Duration::from_secs(1)),
        Failure::rate_limited(Duration::from_secs(1)),
    ]);
    stack.submit_many(3, KEY_A).await;
    let throttled = prometheus
        .until(
            r#"sum(sluice_provider_responses_total{status="429"})"#,
            Duration::from_secs(60),
            |v| v >= 1.0,
        )
        .await;
    assert!(
        throttled.is_some(),
        "no 429 in sluice_provider_responses_total"
    );
    let waits = prometheus
        .until(
            "sum(sluice_throttle_wait_seconds_count)",
            Duration::from_secs(60),
            |v| v >= 1.0,
        )
        .await;
    assert!(waits.is_some(), "the 429 did not show as a throttle wait");

    drop(worker);
    let _ = std::fs::remove_file(&config);
    stack.stop().await;
}
