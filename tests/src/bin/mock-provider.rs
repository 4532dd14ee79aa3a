//! The mock LLM provider as a process, for demos and benchmarks:
//! `mock-provider --listen 127.0.0.1:9100 --latency-ms 50 --completion-tokens 32`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use sluice_tests::mock::{Behaviour, Latency, MockProvider};

/// A mock LLM provider speaking OpenAI's (and Azure's), Anthropic's and Gemini's wire
/// formats on one port (see `sluice_tests::mock`).
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// A whole behaviour as JSON, e.g. '{"latency": {"min": "20ms", "max": "80ms"}}';
    /// the flags below override its fields.
    #[arg(long)]
    behaviour: Option<String>,
    #[arg(long)]
    latency_ms: Option<u64>,
    #[arg(long)]
    completion_tokens: Option<u32>,
    /// Content chunks per streamed reply (default: one per word).
    #[arg(long)]
    stream_chunks: Option<NonZeroU32>,
    #[arg(long)]
    stream_chunk_delay_ms: Option<u64>,
    /// Expected `Authorization: Bearer` key; none = any key is accepted.
    #[arg(long, env = "MOCK_PROVIDER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A model that exists (repeatable); none = every model exists.
    #[arg(long = "model")]
    models: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let args = Args::parse();
    let mut behaviour = match &args.behaviour {
        Some(json) => serde_json::from_str(json).context("--behaviour is not a valid behaviour")?,
        // Nobody can read a process's recorded calls; recording would only cost.
        None => Behaviour {
            record_calls: false,
            ..Behaviour::default()
        },
    };
    if let Some(ms) = args.latency_ms {
        behaviour.latency = Latency::Fixed(Duration::from_millis(ms));
    }
    if let Some(tokens) = args.completion_tokens {
        behaviour.completion_tokens = tokens;
    }
    behaviour.stream_chunks = args.stream_chunks.or(behaviour.stream_chunks);
    if let Some(ms) = args.stream_chunk_delay_ms {
        behaviour.stream_chunk_delay = Duration::from_millis(ms);
    }
    behaviour.api_key = args.api_key.or(behaviour.api_key);
    if !args.models.is_empty() {
        behaviour.models = args.models;
    }

    let mock = MockProvider::start_on(args.listen, behaviour).await?;
    tracing::info!(base_url = %mock.base_url(), "mock provider ready");
    shutdown_signal().await?;
    mock.shutdown().await
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for ctrl-c"),
        _ = terminate.recv() => Ok(()),
    }
}
