use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Sluice ingress: OpenAI-compatible HTTP in, Kafka out.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML config file (env SLUICE_<SECTION>_<KEY> overrides it).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Print the SHA-256 to put in `[[keys]]` for a plaintext key, then exit.
    #[arg(long, value_name = "KEY")]
    hash_key: Option<String>,
    /// A local demo: accept the repository's published demo keys (scripts/run.sh passes it).
    #[arg(long, env = "SLUICE_DEMO")]
    demo: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(key) = args.hash_key {
        #[expect(
            clippy::print_stdout,
            reason = "--hash-key prints the digest for the config"
        )]
        {
            println!("{}", sluice_ingress::auth::hex_digest(&key));
        }
        return Ok(());
    }
    let config = sluice_ingress::Config::load(args.config.as_deref())?;
    let tracing = sluice_schemas::logging::init(
        &config.log,
        &config.trace,
        "sluice-ingress",
        "info,rdkafka=warn",
        std::io::stdout,
    )?;
    if !args.demo {
        sluice_ingress::demo::refuse_demo_secrets(&config)?;
    }
    let shutdown = CancellationToken::new();
    let ingress = sluice_ingress::start(config, shutdown.clone()).await?;
    shutdown_on_signal(shutdown).await;
    let ended = ingress.task.await;
    if let Some(tracing) = tracing {
        tracing.shutdown().await;
    }
    Ok(ended?)
}

async fn shutdown_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
