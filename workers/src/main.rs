use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Sluice model worker: drains request topics and calls providers.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML config file (env SLUICE_<SECTION>_<KEY> overrides it).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = sluice_workers::Config::load(args.config.as_deref())?;
    let tracing = sluice_schemas::logging::init(
        &config.log,
        &config.trace,
        "sluice-worker",
        "info,rdkafka=warn",
        std::io::stdout,
    )?;
    let shutdown = CancellationToken::new();
    let mut worker = tokio::spawn(sluice_workers::run(config, shutdown.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let ended = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        // The worker stopped on its own: an error worth exiting non-zero for.
        ended = &mut worker => Some(ended),
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            tracing::info!("shutting down");
            shutdown.cancel();
            worker.await
        }
    };
    if let Some(tracing) = tracing {
        tracing.shutdown().await;
    }
    Ok(ended??)
}
