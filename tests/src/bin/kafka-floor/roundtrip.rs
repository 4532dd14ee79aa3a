//! Two Kafka hops at a constant rate, with the services' client settings.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use sluice_schemas::kafka::{client_config, reliable_producer, ProducerSettings};
use sluice_tests::bench::{histogram, micros, ms, own_cpu_seconds, parse_duration, round3};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The two topics are `<prefix>.hop1` and `<prefix>.hop2` (created, one partition each).
    #[arg(long)]
    topic_prefix: String,
    /// Round trips started per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Sent before the measured time at the same rate; not recorded.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Bytes per message (a request record's order of size).
    #[arg(long, default_value_t = 400)]
    payload_bytes: usize,
    /// How long to wait for the last round trips after the schedule ended.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
}

pub(crate) struct Report {
    pub(crate) summary: String,
    pub(crate) json: serde_json::Value,
}

/// The first 16 bytes of every message: its scheduled send (µs after the run's origin) and
/// whether it is measured (1) or warmup (0).
const HEADER: usize = 16;

struct Tally {
    latency: Histogram<u64>,
    send_lag: Histogram<u64>,
    received: u64,
    last: Option<Instant>,
}

type Shared = Arc<Mutex<Tally>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) async fn run(
    bootstrap: &str,
    options: &BTreeMap<String, String>,
    args: &Args,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be a positive number"
    );
    let hop1 = format!("{}.hop1", args.topic_prefix);
    let hop2 = format!("{}.hop2", args.topic_prefix);
    create_topics(bootstrap, options, &[&hop1, &hop2]).await?;
    let producer = |linger_ms| {
        reliable_producer(&ProducerSettings {
            bootstrap,
            options,
            linger_ms,
            message_timeout: Duration::from_secs(30),
            max_message_bytes: sluice_schemas::topics::MAX_MESSAGE_BYTES,
        })
    };
    // The ingress's request producer, the worker's reply producer.
    let ingress_out: FutureProducer = producer(0).context("hop1 producer")?;
    let worker_out: FutureProducer = producer(1).context("hop2 producer")?;
    // The worker's consumer (librdkafka's fetch defaults), the ingress's reply reader.
    let group = format!("{}-floor", args.topic_prefix);
    let worker_in = reader(bootstrap, options, &group, &hop1, &[])?;
    let ingress_in = reader(
        bootstrap,
        options,
        &group,
        &hop2,
        &[("fetch.min.bytes", "1"), ("fetch.wait.max.ms", "100")],
    )?;

    let failed = Arc::new(AtomicU64::new(0));
    // Hop 2: the echo, as the worker answers (no wait for the ack before the next message).
    let echo = {
        let failed = Arc::clone(&failed);
        let hop2 = hop2.clone();
        tokio::spawn(async move {
            loop {
                let Ok(message) = worker_in.recv().await else {
                    continue;
                };
                let payload = message.payload().unwrap_or_default().to_vec();
                match worker_out.send_result(FutureRecord::<(), _>::to(&hop2).payload(&payload)) {
                    Ok(delivery) => {
                        let failed = Arc::clone(&failed);
                        tokio::spawn(async move {
                            if !matches!(delivery.await, Ok(Ok(_))) {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let origin = Instant::now();
    let tally: Shared = Arc::new(Mutex::new(Tally {
        latency: histogram()?,
        send_lag: histogram()?,
        received: 0,
        last: None,
    }));
    let collector = {
        let tally = Arc::clone(&tally);
        tokio::spawn(async move {
            loop {
                let Ok(message) = ingress_in.recv().await else {
                    continue;
                };
                let now = Instant::now();
                let Some((scheduled_us, measured)) = message.payload().and_then(header) else {
                    continue;
                };
                if measured {
                    let scheduled = origin + Duration::from_micros(scheduled_us);
                    let mut t = lock(&tally);
                    t.latency.saturating_record(micros(now - scheduled));
                    t.received += 1;
                    t.last = Some(now);
                }
            }
        })
    };

    let cpu_before = own_cpu_seconds();
    let start = Instant::now() + Duration::from_millis(10);
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let (rate, size) = (args.rate, args.payload_bytes.max(HEADER));
    let (tally2, failed2) = (Arc::clone(&tally), Arc::clone(&failed));
    let runtime = tokio::runtime::Handle::current();
    // The schedule on a thread of its own, as in loadgen's open mode (a thread sleep wakes
    // within tens of microseconds; tokio's timer only at the next millisecond).
    let (scheduled_count, sent_total) = tokio::task::spawn_blocking(move || {
        let (mut measured_count, mut sent_total) = (0u64, 0u64);
        let mut payload = vec![b'x'; size];
        for i in 0u64.. {
            let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
            if scheduled >= end {
                break;
            }
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            let measured = scheduled >= measure_from;
            measured_count += u64::from(measured);
            let at = u64::try_from((scheduled - origin).as_micros()).unwrap_or(u64::MAX);
            payload[..8].copy_from_slice(&at.to_be_bytes());
            payload[8..HEADER].copy_from_slice(&u64::from(measured).to_be_bytes());
            let lag = Instant::now().saturating_duration_since(scheduled);
            if measured {
                lock(&tally2).send_lag.saturating_record(micros(lag));
            }
            sent_total += 1;
            let record = FutureRecord::<(), _>::to(&hop1).payload(&payload);
            match ingress_out.send_result(record) {
                Ok(delivery) => {
                    let failed = Arc::clone(&failed2);
                    runtime.spawn(async move {
                        if !matches!(delivery.await, Ok(Ok(_))) {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                Err(_) => {
                    failed2.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        (measured_count, sent_total)
    })
    .await
    .context("the scheduler thread failed")?;
    let deadline = Instant::now() + args.timeout;
    while lock(&tally).received < scheduled_count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    echo.abort();
    collector.abort();
    let cpu = match (cpu_before, own_cpu_seconds()) {
        (Some(before), Some(after)) => Some(round3(after - before)),
        _ => None,
    };
    let t = lock(&tally);
    let window = t
        .last
        .map_or(args.duration, |last| args.duration.max(last - measure_from));
    let missing = scheduled_count.saturating_sub(t.received);
    let mut errors = BTreeMap::new();
    if missing > 0 {
        errors.insert("not_received", missing);
    }
    let produce_failed = failed.load(Ordering::Relaxed);
    if produce_failed > 0 {
        errors.insert("produce_failed", produce_failed);
    }
    let h = &t.latency;
    let q = |quantile| ms(h.value_at_quantile(quantile));
    let json = json!({
        "mode": "kafka-floor",
        "sent": scheduled_count,
        "ok": t.received,
        "errors_by_status": errors,
        "achieved_rps": round3(t.received as f64 / window.as_secs_f64()),
        "p50_ms": q(0.5),
        "p90_ms": q(0.9),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": ms(h.max()),
        "duration_s": round3(window.as_secs_f64()),
        "rate": args.rate,
        "sent_total": sent_total,
        "payload_bytes": size,
        "send_lag_p50_ms": ms(t.send_lag.value_at_quantile(0.5)),
        "send_lag_p99_ms": ms(t.send_lag.value_at_quantile(0.99)),
        "loadgen_cpu_s": cpu,
    });
    let (prefix, rate, received) = (&args.topic_prefix, args.rate, t.received);
    let (duration, warmup) = (args.duration, args.warmup);
    let summary = format!(
        "kafka floor: {prefix}.hop1 -> {prefix}.hop2 at {rate} msg/s for {duration:?} (warmup \
         {warmup:?}), {size}-byte messages\n\
         sent {scheduled_count}, round trips {received}, errors {errors:?}\n\
         round trip (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        ms(h.max()),
    );
    Ok(Report { summary, json })
}

/// A message's scheduled send (µs after the origin) and whether it is measured.
fn header(payload: &[u8]) -> Option<(u64, bool)> {
    let at = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let measured = u64::from_be_bytes(payload.get(8..HEADER)?.try_into().ok()?);
    Some((at, measured == 1))
}

/// A consumer assigned partition 0 of `topic` from its beginning (the topics are new), never
/// committing: as the ingress's readers; the worker's group consumer fetches the same way.
fn reader(
    bootstrap: &str,
    options: &BTreeMap<String, String>,
    group: &str,
    topic: &str,
    defaults: &[(&str, &str)],
) -> anyhow::Result<StreamConsumer> {
    let mut cc = client_config(bootstrap, options, defaults);
    cc.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: StreamConsumer = cc.create().context("creating a consumer")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .context("partition list")?;
    consumer.assign(&tpl).context("assigning the partition")?;
    Ok(consumer)
}

async fn create_topics(
    bootstrap: &str,
    options: &BTreeMap<String, String>,
    topics: &[&str],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap, options, &[])
        .create()
        .context("creating the admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .context("creating the floor topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code)).with_context(|| format!("topic {topic}"))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{header, HEADER};

    #[test]
    fn the_header_carries_the_schedule_and_the_measured_flag() {
        let mut payload = vec![b'x'; HEADER + 10];
        payload[..8].copy_from_slice(&1_234_567u64.to_be_bytes());
        payload[8..HEADER].copy_from_slice(&1u64.to_be_bytes());
        assert_eq!(header(&payload), Some((1_234_567, true)));
        payload[8..HEADER].copy_from_slice(&0u64.to_be_bytes());
        assert_eq!(header(&payload), Some((1_234_567, false)));
        assert_eq!(header(&payload[..10]), None);
    }
}
