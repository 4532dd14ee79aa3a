//! The whole pipeline with each process as its own ClickHouse user (docs/security.md): the
//! ingress with its private database only, the sink with inserts only, the migrations as the
//! migrator. Async results and a batch's output are served under those rights. services.sh
//! binds the users to fixed databases, so this runs in `sluice_acl_e2e`, one test only.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_and_batch_apis_work_as_the_processes_own_clickhouse_users() {
    let stack = Stack::start(StackOptions {
        process_users: true,
        ..StackOptions::default()
    })
    .await;
    assert_eq!(stack.database, PROCESS_USERS_DATABASE);

    let (status, accepted) = stack.post("/v1/requests", KEY_A, chat("hello")).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    let done = eventually(WAIT, || async {
        let (status, body) = stack.get(&format!("/v1/requests/{id}"), KEY_A).await;
        assert_eq!(status, 200, "{body}");
        (body["status"] == "completed").then_some(body)
    })
    .await
    .expect("the async request completes and is read back through the ingress's user");
    assert_eq!(
        done["response"]["choices"][0]["message"]["content"],
        stack.mock.calls()[0].content.as_str()
    );

    // A batch: the upload, the driver's rows and the output all in the private database.
    let lines: Vec<String> = (0..5)
        .map(|i| {
            json!({"custom_id": format!("q-{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": MODEL, "messages": [{"role": "user", "content": format!("q {i}")}]}})
            .to_string()
        })
        .collect();
    let boundary = "sluice-acl-boundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n{}\r\n--{boundary}--\r\n",
        lines.join("\n")
    );
    let file: Value = stack
        .http
        .post(format!("{}/v1/files", stack.base))
        .bearer_auth(KEY_A)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (status, batch) = stack
        .post(
            "/v1/batches",
            KEY_A,
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                   "completion_window": "24h"}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    let path = format!("/v1/batches/{}", batch["id"].as_str().unwrap());
    let finished = eventually(WAIT, || async {
        let (_, b) = stack.get(&path, KEY_A).await;
        (b["status"] == "completed").then_some(b)
    })
    .await
    .expect("the batch completes");
    assert_eq!(
        finished["request_counts"],
        json!({"total": 5, "completed": 5, "failed": 0})
    );
    let (_, output) = crate::batch::jsonl(
        &stack,
        &format!(
            "/v1/files/{}/content",
            finished["output_file_id"].as_str().unwrap()
        ),
        KEY_A,
    )
    .await;
    assert_eq!(output.len(), 5, "{output:?}");

    // The analyst database has outcomes, not completions; the bodies are private.
    let analyst_bodies = stack
        .ch("SELECT count() FROM system.columns WHERE database = '{db}' AND table = 'results' AND name = 'body'")
        .await;
    assert_eq!(analyst_bodies.trim(), "0");
    let private_bodies = stack
        .ch("SELECT count() FROM {db}_private.result_bodies FINAL")
        .await;
    assert_eq!(private_bodies.trim(), "6");
    stack.stop().await;
}
