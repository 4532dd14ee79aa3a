//! Shadow traffic (`[[shadows]]`, docs/replay.md): after a live request is accepted, a copy
//! of it for a candidate model, at batch priority, published in the background. The caller
//! never waits for it; the copy's result and usage go to the replay tables only.

use sluice_schemas::replay::{copy, sampled, SHADOW_PREFIX};
use sluice_schemas::{encode, now_ms, Request};

use super::Handles;

/// Publishes, without waiting, the copy of `r` for every shadow whose sample it is in.
pub(crate) fn mirror(app: &impl Handles, r: &Request) {
    let config = app.config();
    if config.shadows.is_empty() || !config.replay.allows(config, &r.team) {
        return;
    }
    for shadow in &config.shadows {
        if shadow.model != r.model
            || (!shadow.teams.is_empty() && !shadow.teams.contains(&r.team))
            || !sampled(&r.request_id, shadow.percent)
        {
            continue;
        }
        let now = now_ms();
        let deadline = now.saturating_add(config.replay.deadline_ms.as_millis() as i64);
        let replay_id = format!("{SHADOW_PREFIX}{}", shadow.name);
        let Ok(shadowed) = copy(r, &replay_id, &shadow.target_model, now, deadline) else {
            continue;
        };
        let Ok(payload) = encode(&shadowed) else {
            continue;
        };
        let (topic, partition) = app.routing().copy_destination(app.topics(), &r.team);
        let producer = app.producer().clone();
        let (name, team) = (shadow.name.clone(), r.team.clone());
        tokio::spawn(async move {
            let sent =
                crate::kafka::send(&producer, &topic, &team, &payload, Some(partition)).await;
            let outcome = if sent.is_ok() { "sent" } else { "failed" };
            if let Err(error) = sent {
                tracing::warn!(shadow = %name, %error, "shadow copy not published");
            }
            metrics::counter!("sluice_shadow_requests_total", "shadow" => name, "outcome" => outcome)
                .increment(1);
        });
    }
}
