//! A whole Sluice stack per test, on the real Kafka and ClickHouse started by
//! scripts/services.sh: its own topic prefix, consumer groups and ClickHouse database, so
//! tests run side by side.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::mock::{Behaviour, MockProvider};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod sse;
mod webhook;

pub use sse::{sse_data, sse_events};
pub use webhook::{webhook_receiver, Deliveries, Delivery};

pub const KEY_A: &str = "sk-test-team-a";
pub const KEY_B: &str = "sk-test-team-b";
/// Team A's key limited to 2 sync requests a minute.
pub const KEY_LIMITED: &str = "sk-test-team-a-limited";
pub const MODEL: &str = "gpt-4o-mini";
/// The admin API's key in every test stack.
pub const ADMIN_KEY: &str = "sk-test-admin";
/// USD per million tokens for MODEL in every test stack.
pub const PRICE_IN: f64 = 0.15;
pub const PRICE_OUT: f64 = 0.6;

pub fn kafka_bootstrap() -> String {
    std::env::var("SLUICE_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

pub fn clickhouse_url() -> String {
    std::env::var("SLUICE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

/// services.sh's Redis (the ingress's idempotency keys).
pub fn redis_url() -> String {
    std::env::var("SLUICE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379".into())
}

/// `host:port` of an http URL, for `allowed_hosts` (a local receiver opts in).
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// The DDL-capable ClickHouse user tests run as (each test creates its own databases):
/// `SLUICE_CLICKHOUSE_USER` / `SLUICE_CLICKHOUSE_PASSWORD`, from `scripts/services.sh env`.
pub fn clickhouse_user() -> Option<String> {
    std::env::var("SLUICE_CLICKHOUSE_USER")
        .ok()
        .filter(|u| !u.is_empty())
}

pub fn clickhouse_password() -> Option<String> {
    std::env::var("SLUICE_CLICKHOUSE_PASSWORD").ok()
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub struct StackOptions {
    pub bootstrap: String,
    pub behaviour: Behaviour,
    /// Start an in-process worker.
    pub worker: bool,
    pub clickhouse_url: String,
    pub produce_timeout: Duration,
    /// TOML appended to every worker's config: more `[[deployments]]`, `[[routes]]`,
    /// `[[prices]]`, `[circuit_breaker]`. `{origin}` stands for the stack's mock
    /// (`http://127.0.0.1:PORT`).
    pub extra_worker_toml: String,
    /// Model names the ingress accepts besides MODEL (deployed models and aliases).
    pub extra_models: Vec<String>,
    /// Requests a worker runs at once.
    pub max_in_flight: usize,
    /// The ingress's `[guard]` section, as TOML without the `[guard]` prefix
    /// (`[default.pii]`, `[teams.team-a]`, `[[templates]]`, ...).
    pub guard_toml: String,
    /// The ingress's `[webhooks]` section (batch and async-request webhooks), as TOML
    /// without the `[webhooks]` prefix: `allowed_hosts = [...]`, `[teams.team-a]`.
    pub webhooks_toml: String,
    /// The ingress's `[audit]` section, as TOML without the `[audit]` prefix
    /// (`content = "full"`, `[teams]`).
    pub audit_toml: String,
    /// The ingress's `[[budgets]]` and `[budget]` sections, as TOML (docs/budgets.md). The
    /// ingress always has MODEL's price.
    pub budget_toml: String,
    /// The ingress's `[batch]` caps, as TOML with the `[batch]` header.
    pub batch_toml: String,
    /// The analytics sink's `[[alert_webhooks]]` (budget alerts).
    pub alert_webhooks: Vec<sluice_analytics::alerts::AlertWebhook>,
    /// The analytics sink's `[webhooks] allowed_hosts` (local alert receivers opt in).
    pub alert_allowed_hosts: Vec<String>,
    /// Run the ingress and the sink as their own ClickHouse users (SLUICE_CH_INGRESS_* and
    /// SLUICE_CH_SINK_*, from `scripts/services.sh env`) instead of the tests' migrator. Those
    /// users are bound to fixed databases: the stack uses [`PROCESS_USERS_DATABASE`], so only
    /// one such stack may run at a time.
    pub process_users: bool,
    /// The ingress's `[kafka] max_message_bytes` (its topics are created with it; the
    /// workers keep the default, so they meet the broker's refusal).
    pub topic_max_message_bytes: Option<usize>,
    /// Changes to the ingress's config before it starts.
    pub ingress_config: Option<fn(&mut sluice_ingress::Config)>,
}

/// The database of a `process_users` stack (one of services.sh's CH_DATABASES).
pub const PROCESS_USERS_DATABASE: &str = "sluice_acl_e2e";

/// `SLUICE_CH_<ROLE>_USER` / `_PASSWORD`.
fn process_user(role: &str) -> (Option<String>, Option<String>) {
    let var = |what: &str| {
        let name = format!("SLUICE_CH_{role}_{what}");
        Some(std::env::var(&name).unwrap_or_else(|_| {
            panic!("{name} is not set: eval \"$(bash scripts/services.sh env)\"")
        }))
    };
    (var("USER"), var("PASSWORD"))
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            bootstrap: kafka_bootstrap(),
            behaviour: Behaviour::default(),
            worker: true,
            clickhouse_url: clickhouse_url(),
            produce_timeout: Duration::from_secs(5),
            extra_worker_toml: String::new(),
            extra_models: Vec::new(),
            max_in_flight: 64,
            guard_toml: String::new(),
            webhooks_toml: String::new(),
            alert_allowed_hosts: Vec::new(),
            audit_toml: String::new(),
            budget_toml: String::new(),
            batch_toml: String::new(),
            alert_webhooks: Vec::new(),
            process_users: false,
            topic_max_message_bytes: None,
            ingress_config: None,
        }
    }
}

pub struct Stack {
    pub prefix: String,
    /// The console's base URL (`http://127.0.0.1:PORT`), when the config turned it on.
    pub console: Option<String>,
    pub database: String,
    pub bootstrap: String,
    pub base: String,
    pub mock: MockProvider,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    /// The first ingress's config (more replicas start from it).
    pub ingress_config: sluice_ingress::Config,
    extra_worker_toml: String,
    max_in_flight: usize,
    worker_shutdown: Vec<(CancellationToken, JoinHandle<()>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Stack {
    pub async fn start(options: StackOptions) -> Stack {
        // RUST_LOG=sluice_ingress=debug etc. shows the services' logs in a failing test.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn,rdkafka=off".into()),
            )
            .try_init();
        let prefix = unique("t");
        let database = if options.process_users {
            // Left over from an interrupted run, if any.
            for db in ["", "_private"] {
                let _ = ch_query(&format!(
                    "DROP DATABASE IF EXISTS {PROCESS_USERS_DATABASE}{db}"
                ))
                .await;
            }
            PROCESS_USERS_DATABASE.to_string()
        } else {
            format!("sluice_{prefix}")
        };
        let shutdown = CancellationToken::new();
        let mock = MockProvider::start(options.behaviour)
            .await
            .expect("mock provider");

        let mut ingress = sluice_ingress::Config {
            server: Default::default(),
            kafka: Default::default(),
            clickhouse: Default::default(),
            deadlines: Default::default(),
            routing: Default::default(),
            keys: vec![
                key("key_a", "team-a", KEY_A),
                key("key_b", "team-b", KEY_B),
                sluice_ingress::config::KeyConfig {
                    requests_per_minute: std::num::NonZeroU32::new(2),
                    ..key("key_limited", "team-a", KEY_LIMITED)
                },
            ],
            models: std::iter::once(MODEL.to_string())
                .chain(options.extra_models.iter().cloned())
                .map(|id| sluice_ingress::config::ModelConfig {
                    owned_by: "openai".into(),
                    tokenizer: None,
                    context_window: (id == MODEL).then_some(128_000),
                    dimensions: None,
                    id,
                })
                .collect(),
            admin: sluice_ingress::config::AdminConfig {
                key_sha256: Some(sluice_ingress::auth::hex_digest(ADMIN_KEY)),
            },
            guard: {
                use figment::providers::Format;
                figment::Figment::from(figment::providers::Toml::string(&options.guard_toml))
                    .extract()
                    .expect("guard TOML")
            },
            audit: {
                use figment::providers::Format;
                figment::Figment::from(figment::providers::Toml::string(&options.audit_toml))
                    .extract()
                    .expect("audit TOML")
            },
            prices: vec![sluice_schemas::pricing::Price {
                model: MODEL.into(),
                input_per_million: PRICE_IN,
                output_per_million: PRICE_OUT,
                cached_input_per_million: None,
            }],
            budgets: toml_section(&options.budget_toml, "budgets"),
            budget: toml_section(&options.budget_toml, "budget"),
            webhooks: {
                use figment::providers::Format;
                figment::Figment::from(figment::providers::Toml::string(&options.webhooks_toml))
                    .extract()
                    .expect("webhooks TOML")
            },
            retention: Default::default(),
            batch: toml_section(&options.batch_toml, "batch"),
            billing: toml_section(&options.budget_toml, "billing"),
            listener: Default::default(),
            log: Default::default(),
            trace: Default::default(),
            ops: Default::default(),
            // services.sh's Redis, shared by every replica of this stack.
            idempotency: sluice_ingress::config::IdempotencyConfig {
                redis_url: Some(redis_url()),
                ..Default::default()
            },
            cache: Default::default(),
            console: Default::default(),
            replay: Default::default(),
            shadows: Vec::new(),
        };
        ingress.server.listen = "127.0.0.1:0".into();
        ingress.server.sync_timeout_ms = Duration::from_secs(30);
        ingress.kafka.bootstrap = options.bootstrap.clone();
        ingress.kafka.topic_prefix = prefix.clone();
        ingress.kafka.produce_timeout_ms = options.produce_timeout;
        ingress.clickhouse.url = options.clickhouse_url.clone();
        ingress.clickhouse.database = database.clone();
        (ingress.clickhouse.user, ingress.clickhouse.password) = if options.process_users {
            process_user("INGRESS")
        } else {
            (clickhouse_user(), clickhouse_password())
        };
        if let Some(limit) = options.topic_max_message_bytes {
            ingress.kafka.max_message_bytes = limit;
        }
        if let Some(change) = options.ingress_config {
            change(&mut ingress);
        }
        // The console's backlog page reads this stack's worker groups.
        ingress.console.worker_group_id = format!("{prefix}-workers");
        let ingress_config = ingress.clone();
        let running = sluice_ingress::start(ingress, shutdown.clone())
            .await
            .expect("ingress starts (is Kafka up? scripts/services.sh start)");

        let mut analytics = sluice_analytics::Config::default();
        analytics.kafka.bootstrap = options.bootstrap.clone();
        analytics.kafka.topic_prefix = prefix.clone();
        analytics.kafka.group_id = format!("{prefix}-analytics");
        analytics.clickhouse.url = clickhouse_url();
        analytics.clickhouse.database = database.clone();
        (analytics.clickhouse.user, analytics.clickhouse.password) = if options.process_users {
            process_user("SINK")
        } else {
            (clickhouse_user(), clickhouse_password())
        };
        analytics.clickhouse.migrator_user = clickhouse_user();
        analytics.clickhouse.migrator_password = clickhouse_password();
        analytics.sink.flush_interval_ms = Duration::from_millis(200);
        // A sink consumer stuck after a broker restart is replaced well inside the tests' waits.
        analytics.sink.stall_timeout_ms = Duration::from_secs(20);
        analytics.alert_webhooks = options.alert_webhooks.clone();
        analytics.webhooks.allowed_hosts = options.alert_allowed_hosts.clone();
        // Tables exist before the test's first query.
        let client = sluice_analytics::migrator_client(&analytics.clickhouse);
        sluice_analytics::apply_migrations(&client, &database)
            .await
            .expect("migrations apply (is ClickHouse up?)");
        let sink_shutdown = shutdown.clone();
        let sink = tokio::spawn(async move {
            if let Err(e) = sluice_analytics::run(analytics, sink_shutdown).await {
                panic!("analytics sink failed: {e:?}");
            }
        });

        let mock_origin = mock.origin();
        let mut stack = Stack {
            base: format!("http://{}", running.addr),
            console: running.console.map(|a| format!("http://{a}")),
            prefix,
            database,
            bootstrap: options.bootstrap,
            mock,
            // Bounded, so an ingress that never answers fails its test instead of hanging the
            // suite; no test waits this long for one answer.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(180))
                .build()
                .expect("HTTP client"),
            shutdown,
            ingress_config,
            extra_worker_toml: options.extra_worker_toml.replace("{origin}", &mock_origin),
            max_in_flight: options.max_in_flight,
            worker_shutdown: Vec::new(),
            tasks: vec![running.task, sink],
        };
        if options.worker {
            stack.add_worker("w1");
        }
        stack
    }

    /// Worker config for this stack (shared by in-process and subprocess workers).
    pub fn worker_config(&self, id: &str) -> sluice_workers::Config {
        let toml = self.worker_toml(id);
        let mut config = figment_from(&toml);
        config.worker.id = id.into();
        config
    }

    pub fn worker_toml(&self, id: &str) -> String {
        format!(
            r#"
[kafka]
bootstrap = "{bootstrap}"
topic_prefix = "{prefix}"
group_id = "{prefix}-workers"
options = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}

[worker]
id = "{id}"
max_in_flight = {max_in_flight}
drain_timeout_ms = 10000

[[deployments]]
name = "mock-{MODEL}"
model = "{MODEL}"
timeout_ms = 20000
max_retries = 2
provider = {{ type = "openai", base_url = "{base}" }}

[redelivery]
clickhouse_url = "{clickhouse}"
database = "{database}"
{redelivery_auth}

[[prices]]
model = "{MODEL}"
input_per_million = {PRICE_IN}
output_per_million = {PRICE_OUT}
{extra}
"#,
            bootstrap = self.bootstrap,
            prefix = self.prefix,
            clickhouse = clickhouse_url(),
            database = self.database,
            base = self.mock.base_url(),
            extra = self.extra_worker_toml,
            max_in_flight = self.max_in_flight,
            // The tests' ClickHouse user (scripts/services.sh locks `default`).
            redelivery_auth = clickhouse_user()
                .map(|u| format!("user = \"{u}\"\npassword_env = \"SLUICE_CLICKHOUSE_PASSWORD\""))
                .unwrap_or_default(),
        )
    }

    /// Another ingress replica on the same topics, listening on its own reply partition;
    /// `start` returns once it has read the keys topic.
    pub async fn start_ingress_replica(&self, reply_partition: i32) -> IngressReplica {
        let mut config = self.ingress_config.clone();
        config.server.reply_partition = reply_partition;
        config.server.instance_id = format!("ingress-{reply_partition}");
        let shutdown = self.shutdown.child_token();
        let running = sluice_ingress::start(config, shutdown.clone())
            .await
            .expect("ingress replica starts");
        IngressReplica {
            base: format!("http://{}", running.addr),
            shutdown,
            task: running.task,
        }
    }

    pub fn add_worker(&mut self, id: &str) {
        let config = self.worker_config(id);
        let token = self.shutdown.child_token();
        let t = token.clone();
        let handle = tokio::spawn(async move {
            if let Err(e) = sluice_workers::run(config, t).await {
                panic!("worker failed: {e:?}");
            }
        });
        self.worker_shutdown.push((token, handle));
    }

    pub async fn stop_workers(&mut self) {
        for (token, handle) in self.worker_shutdown.drain(..) {
            token.cancel();
            // Bounded: a worker that does not stop is dropped with the runtime.
            let _ = tokio::time::timeout(Duration::from_secs(30), handle).await;
        }
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        let request = self.http.post(format!("{}{path}", self.base));
        json_answer(request.bearer_auth(key).json(&body)).await
    }

    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let request = self.http.get(format!("{}{path}", self.base));
        json_answer(request.bearer_auth(key)).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> (u16, Value) {
        let request = self.http.delete(format!("{}{path}", self.base));
        json_answer(request.bearer_auth(key)).await
    }

    /// Submits async requests and returns their ids.
    pub async fn submit_many(&self, n: usize, key: &str) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let (status, body) = self
                .post("/v1/requests", key, chat(&format!("question {i}")))
                .await;
            assert_eq!(status, 202, "{body}");
            ids.push(body["id"].as_str().expect("id").to_string());
        }
        ids
    }

    /// `POST /v1/chat/completions` with `key`: (status, body, the `x-sluice-request-id`).
    pub async fn chat_with_id(&self, key: &str, body: &Value) -> (u16, Value, String) {
        let response = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("ingress answers");
        let status = response.status().as_u16();
        let id = response.headers()["x-sluice-request-id"]
            .to_str()
            .expect("an ASCII request id")
            .to_string();
        (status, response.json().await.expect("a JSON answer"), id)
    }

    /// The `results` row of `request_id` (`columns`, TSV, trimmed), once the sink wrote it.
    pub async fn result_row(&self, request_id: &str, columns: &str) -> String {
        self.row_of("results", request_id, columns).await
    }

    /// The `usage` row of `request_id` (`columns`, TSV, trimmed), once the sink wrote it.
    pub async fn usage_row(&self, request_id: &str, columns: &str) -> String {
        self.row_of("usage", request_id, columns).await
    }

    async fn row_of(&self, table: &str, request_id: &str, columns: &str) -> String {
        let sql =
            format!("SELECT {columns} FROM {{db}}.{table} FINAL WHERE request_id = '{request_id}'");
        eventually(Duration::from_secs(60), || async {
            let row = self.ch(&sql).await;
            (!row.trim().is_empty()).then(|| row.trim().to_string())
        })
        .await
        .expect("result landed")
    }

    /// Runs a query on this stack's database and returns TSV.
    pub async fn ch(&self, sql: &str) -> String {
        ch_query(&sql.replace("{db}", &self.database)).await
    }

    /// Polls until `count_sql` returns `want` (bounded wait; the assertion is on the value).
    pub async fn wait_count(&self, count_sql: &str, want: u64, limit: Duration) -> u64 {
        let mut last = 0;
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            last = self.ch(count_sql).await.trim().parse().unwrap_or(0);
            if last >= want {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        last
    }

    pub async fn stop(mut self) {
        self.stop_workers().await;
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
        let _ = ch_query(&format!("DROP DATABASE IF EXISTS {}", self.database)).await;
        let _ = ch_query(&format!(
            "DROP DATABASE IF EXISTS {}",
            sluice_schemas::tables::private_database(&self.database)
        ))
        .await;
        delete_topics(&self.bootstrap, &self.prefix).await;
    }
}

/// An ingress replica started by [`Stack::start_ingress_replica`].
pub struct IngressReplica {
    pub base: String,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl IngressReplica {
    /// Stops serving (the stack's own ingress keeps running).
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

/// Deletes the topics of a test's prefix, so repeated runs do not pile topics up on the
/// shared broker.
async fn delete_topics(bootstrap: &str, prefix: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let Ok(admin) = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let Ok(metadata) = admin.inner().fetch_metadata(None, Duration::from_secs(5)) else {
        return;
    };
    let ours: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|name| name.starts_with(&format!("{prefix}.")))
        .collect();
    let names: Vec<&str> = ours.iter().map(String::as_str).collect();
    if !names.is_empty() {
        let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
    }
}

/// `key` of a TOML text, or its default when absent.
fn toml_section<T: serde::de::DeserializeOwned + Default>(toml: &str, key: &str) -> T {
    use figment::providers::Format;
    let figment = figment::Figment::from(figment::providers::Toml::string(toml));
    if figment.contains(key) {
        figment.extract_inner(key).expect("budget TOML")
    } else {
        T::default()
    }
}

fn figment_from(toml: &str) -> sluice_workers::Config {
    use figment::providers::Format;
    let config: sluice_workers::Config =
        figment::Figment::from(figment::providers::Toml::string(toml))
            .extract()
            .expect("worker config");
    config.validate().expect("valid worker config");
    config
}

fn key(id: &str, team: &str, plaintext: &str) -> sluice_ingress::config::KeyConfig {
    sluice_ingress::config::KeyConfig {
        id: id.into(),
        team: team.into(),
        sha256: sluice_ingress::auth::hex_digest(plaintext),
        requests_per_minute: None,
    }
}

/// Sends `request` and reads the answer: its status and its body as JSON (a string when
/// the body is not JSON).
pub async fn json_answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("ingress answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn chat(text: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": text}]})
}

pub async fn ch_query(sql: &str) -> String {
    let mut request = reqwest::Client::new().post(clickhouse_url());
    if let Some(user) = clickhouse_user() {
        request = request.header("X-ClickHouse-User", user).header(
            "X-ClickHouse-Key",
            clickhouse_password().unwrap_or_default(),
        );
    }
    let response = request
        .body(sql.to_string())
        .send()
        .await
        .expect("ClickHouse answers");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "ClickHouse error for {sql}: {text}");
    text
}

/// Retries `f` until it returns Some, within `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A workspace binary built by `cargo build --workspace --bins` (scripts/test.sh does).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join(name))
        .expect("target dir");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A private Kafka broker (its own ports and data dir) that a test may stop and restart.
pub struct PrivateBroker {
    pub bootstrap: String,
    env: Vec<(String, String)>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl PrivateBroker {
    pub fn start() -> PrivateBroker {
        let port = free_port();
        let state = std::env::temp_dir().join(unique("sluice-broker-"));
        let broker = PrivateBroker {
            bootstrap: format!("127.0.0.1:{port}"),
            env: vec![
                ("SLUICE_STATE".into(), state.display().to_string()),
                ("KAFKA_PORT".into(), port.to_string()),
                ("KAFKA_CONTROLLER_PORT".into(), free_port().to_string()),
                ("KAFKA_HEAP".into(), "256m".into()),
            ],
        };
        broker.services("start-kafka");
        broker
    }

    pub fn services(&self, command: &str) {
        let status = std::process::Command::new("bash")
            .arg(repo_root().join("scripts/services.sh"))
            .arg(command)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("services.sh runs");
        assert!(status.success(), "services.sh {command} failed");
    }
}

/// Runs an async test beside a private broker that outlives the test's runtime, on a runtime
/// whose shutdown is bounded. A task still holding a Kafka client when a test ends (one that
/// did not stop in time, or every task of a test that panicked) is dropped while its broker is
/// still up: a consumer closing against a stopped broker can block for good, and a
/// `#[tokio::test]` runtime waits for it forever (a CI run hung 80 minutes so).
pub fn with_private_broker<F, Fut>(test: F)
where
    F: FnOnce(std::sync::Arc<PrivateBroker>) -> Fut,
    Fut: Future<Output = ()>,
{
    let broker = std::sync::Arc::new(PrivateBroker::start());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(test(std::sync::Arc::clone(&broker)))
    }));
    runtime.shutdown_timeout(Duration::from_secs(20));
    drop(broker);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.services("stop-kafka");
        if let Some((_, state)) = self.env.iter().find(|(k, _)| k == "SLUICE_STATE") {
            let _ = std::fs::remove_dir_all(state);
        }
    }
}
