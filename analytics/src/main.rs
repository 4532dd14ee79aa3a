//! `sluice-analytics [--config FILE] [migrate|run|retention|report ...]`: apply migrations,
//! then sink Kafka into ClickHouse until Ctrl-C or SIGTERM; drop expired content once; or
//! print a report (logs go to stderr).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_analytics::{apply_migrations, client, migrator_client, Config};
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Parser)]
#[command(name = "sluice-analytics", version, about)]
struct Cli {
    /// TOML configuration file; SLUICE_<SECTION>_<KEY> environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Clone, Copy)]
enum Command {
    /// Apply pending ClickHouse migrations and exit.
    Migrate,
    /// Apply pending migrations, then run the sink (the default).
    Run,
    /// Drop expired completions and uploaded files once (as the migrator), and exit.
    Retention,
    /// Print a spend, latency or error report from ClickHouse.
    #[command(subcommand)]
    Report(sluice_analytics::report::ReportCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    let tracing = sluice_schemas::logging::init(
        &config.log,
        &config.trace,
        "sluice-analytics",
        "info",
        std::io::stderr,
    )?;
    info!(?config, "configuration loaded");

    match cli.command.unwrap_or(Command::Run) {
        Command::Migrate => {
            let applied = apply_migrations(
                &migrator_client(&config.clickhouse),
                &config.clickhouse.database,
            )
            .await
            .context("applying migrations")?;
            info!(?applied, database = %config.clickhouse.database, "migrations done");
        }
        Command::Retention => {
            let dropped = sluice_analytics::retention::drop_expired(
                &migrator_client(&config.clickhouse),
                &config.clickhouse.database,
            )
            .await
            .context("dropping expired content")?;
            info!(partitions = dropped.len(), "retention done");
        }
        Command::Report(command) => {
            let (report, days) = command.report();
            let db = &config.clickhouse.database;
            let table = sluice_analytics::report::run(
                &client(&config.clickhouse),
                db,
                report,
                days,
            )
            .await
            .context(
                "running the report (are the migrations applied? `sluice-analytics migrate`)",
            )?;
            std::io::Write::write_all(&mut std::io::stdout().lock(), table.as_bytes())?;
        }
        Command::Run => {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let ran = sluice_analytics::run(config, shutdown).await;
            if let Some(tracing) = tracing {
                tracing.shutdown().await;
            }
            ran.context("running the sink")?;
        }
    }
    Ok(())
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => drop(term.recv().await),
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = term => {}
    }
    info!("shutdown signal received, flushing");
    shutdown.cancel();
}
