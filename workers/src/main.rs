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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .init();
    let args = Args::parse();
    let config = sluice_workers::Config::load(args.config.as_deref())?;
    let shutdown = CancellationToken::new();
    let mut worker = tokio::spawn(sluice_workers::run(config, shutdown.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        // The worker stopped on its own: an error worth exiting non-zero for.
        ended = &mut worker => return Ok(ended??),
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    worker.await??;
    Ok(())
}
