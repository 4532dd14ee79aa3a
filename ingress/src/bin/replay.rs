//! `sluice-replay`: re-runs recorded requests against another model (docs/replay.md).
//! Reads the ingress's config (Kafka, models, prices, `[replay]`), publishes the copies and
//! prints how the replay ended as JSON; the comparison is in ClickHouse's `replay_summary`.

use std::path::PathBuf;

use clap::Parser;
use sluice_ingress::replay::{run_once, Spec, State};
use sluice_schemas::{now_ms, Priority};
use tokio_util::sync::CancellationToken;

/// Re-run the requests of a time range from the request topics against a target model.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The ingress's TOML config file (env SLUICE_<SECTION>_<KEY> overrides it).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Start of the range: Unix ms, or a time ago (`90s`, `30m`, `2h`, `1d`).
    #[arg(long)]
    from: String,
    /// End of the range (exclusive), the same forms; now when absent.
    #[arg(long)]
    to: Option<String>,
    /// The model the copies ask for.
    #[arg(long)]
    target_model: String,
    /// The most the copies may cost, USD.
    #[arg(long)]
    budget_usd: f64,
    /// Only this team's requests.
    #[arg(long)]
    team: Option<String>,
    /// Only requests for this model.
    #[arg(long)]
    model: Option<String>,
    /// Only requests of this class: interactive, standard or batch.
    #[arg(long, value_parser = parse_priority)]
    priority: Option<Priority>,
    /// Copies per second.
    #[arg(long)]
    rate: Option<u32>,
    /// The most requests re-run.
    #[arg(long)]
    limit: Option<u64>,
    /// The replay's id (made up when absent).
    #[arg(long)]
    id: Option<String>,
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    Priority::parse(s).ok_or_else(|| "expected interactive, standard or batch".into())
}

/// Unix ms, or a duration before `now` (`<n>s|m|h|d`).
fn parse_time(s: &str, now: i64) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = n
        .parse()
        .map_err(|_| format!("`{s}`: expected Unix ms or a time ago like 30m"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("`{s}`: the unit is one of s, m, h, d")),
    };
    Ok(now - n.saturating_mul(unit_ms))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = sluice_ingress::Config::load(args.config.as_deref())?;
    let _logs = sluice_schemas::logging::init(
        &config.log,
        &config.trace,
        "sluice-replay",
        "info,rdkafka=warn",
        std::io::stderr,
    )?;
    let now = now_ms();
    let spec = Spec {
        replay_id: args.id,
        from_ms: parse_time(&args.from, now).map_err(anyhow::Error::msg)?,
        to_ms: match &args.to {
            Some(to) => parse_time(to, now).map_err(anyhow::Error::msg)?,
            None => now,
        },
        team: args.team,
        model: args.model,
        priority: args.priority,
        target_model: args.target_model,
        rate_per_s: args.rate,
        budget_usd: args.budget_usd,
        limit: args.limit,
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.cancel();
        }
    });
    let ended = run_once(&config, spec, &shutdown)
        .await
        .map_err(anyhow::Error::msg)?;
    #[expect(
        clippy::print_stdout,
        reason = "the CLI's answer is its JSON on stdout"
    )]
    {
        println!("{}", serde_json::to_string(&ended)?);
    }
    if ended.state == State::Failed {
        anyhow::bail!("replay {} failed", ended.replay_id);
    }
    Ok(())
}
