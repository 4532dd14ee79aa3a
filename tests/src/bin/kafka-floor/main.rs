//! The Kafka floor of Sluice's benchmarks (scripts/bench.sh runs it; docs/benchmarks.md has
//! the figures), with no HTTP and no Sluice code on the path:
//!
//! - `roundtrip`: the two Kafka hops a sync call cannot avoid, at a constant rate (open loop,
//!   latency from each message's scheduled send, as loadgen's open mode): produce to topic
//!   hop1 as the ingress does (`acks=all`, idempotent, `linger.ms=0`), consume it as the worker
//!   does and produce it on to hop2 (`linger.ms=1`), consume that as the ingress's reply
//!   reader does (`fetch.min.bytes=1`, `fetch.wait.max.ms=100`). The clients are built by
//!   `sluice_schemas::kafka`, as the services build theirs. `--json` prints loadgen's fields.
//! - `offsets`: the high watermark of every partition of a deployment's topics (`<prefix>.*`).
//! - `traffic`: messages and bytes (key + value + headers) written to each of those topics
//!   since an `offsets` snapshot, read back from the broker.
//!
//! `kafka-floor roundtrip --bootstrap 127.0.0.1:19092 --topic-prefix bench1-floor --rate 500
//!  --duration 15s --json`

#![expect(clippy::print_stdout, reason = "printing figures is this binary's job")]

mod roundtrip;
mod traffic;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "kafka-floor")]
struct Cli {
    #[arg(
        long,
        env = "SLUICE_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:19092"
    )]
    bootstrap: String,
    /// A librdkafka setting for every client, `key=value` (repeatable): the benchmark's
    /// experiment options, applied as the services apply `[kafka] options`.
    #[arg(long = "option")]
    options: Vec<String>,
    /// roundtrip: print one JSON line on stdout (loadgen's fields; the summary goes to
    /// stderr). offsets and traffic always print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Produce -> consume -> produce -> consume at a constant rate.
    Roundtrip(roundtrip::Args),
    /// Print `{topic: {partition: high watermark}}` of the topics `<prefix>.*` as JSON.
    Offsets {
        #[arg(long)]
        prefix: String,
    },
    /// Messages and bytes per topic since an `offsets` snapshot, as JSON.
    Traffic {
        #[arg(long)]
        prefix: String,
        /// The `offsets` output taken before.
        #[arg(long)]
        since: std::path::PathBuf,
    },
}

/// How long a metadata or watermark request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let options = parse_options(&cli.options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    match cli.command {
        Command::Roundtrip(args) => {
            let report = runtime.block_on(roundtrip::run(&cli.bootstrap, &options, &args))?;
            eprintln!("{}", report.summary);
            if cli.json {
                println!("{}", report.json);
            }
        }
        Command::Offsets { prefix } => {
            let offsets = traffic::offsets(&cli.bootstrap, &options, &prefix)?;
            println!("{}", serde_json::to_string(&offsets)?);
        }
        Command::Traffic { prefix, since } => {
            let text = std::fs::read_to_string(&since)
                .with_context(|| format!("reading {}", since.display()))?;
            let before: traffic::Offsets = serde_json::from_str(&text)
                .with_context(|| format!("{} is not an offsets snapshot", since.display()))?;
            let counts = traffic::since(&cli.bootstrap, &options, &prefix, &before)?;
            println!("{}", serde_json::to_string(&counts)?);
        }
    }
    Ok(())
}

fn parse_options(options: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for option in options {
        let Some((key, value)) = option.split_once('=') else {
            bail!("--option {option:?} is not key=value");
        };
        map.insert(key.trim().to_string(), value.trim().to_string());
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::parse_options;

    #[test]
    fn options_are_key_value_pairs() {
        let options = parse_options(&["linger.ms = 5".into(), "acks=1".into()]).unwrap();
        assert_eq!(options["linger.ms"], "5");
        assert_eq!(options["acks"], "1");
        assert!(parse_options(&["linger.ms".into()]).is_err());
    }
}
