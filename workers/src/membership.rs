//! How a worker's consumers hold their partitions (`[kafka.membership]`): static group
//! membership, a short session, cooperative rebalancing, or Kafka's new consumer protocol
//! (KIP-848). Why each matters for failover: docs/operations.md, "Failover".

use serde::Deserialize;

/// The group protocol the consumers speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupProtocol {
    /// The classic protocol: the client's `session.timeout.ms` and `heartbeat.interval.ms`,
    /// cooperative-sticky assignment on the client.
    #[default]
    Classic,
    /// KIP-848 (Kafka 4.x brokers): the broker assigns incrementally and owns the session
    /// timeout and heartbeat interval (`group.consumer.session.timeout.ms`, min 45 s unless
    /// the broker lowers `group.consumer.min.session.timeout.ms`).
    Consumer,
}

impl GroupProtocol {
    fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Membership {
    pub protocol: GroupProtocol,
    /// `group.instance.id` = the worker id: a worker restarted within the session takes its
    /// partitions back without a rebalance. Needs a worker id unique per process (two
    /// processes with one id fence each other); a member that stops does not leave the
    /// group, its partitions move after `session_timeout_ms`.
    pub static_membership: bool,
    /// Classic protocol: how long the broker waits for a silent member before its partitions
    /// move. The broker's `group.min.session.timeout.ms` (default 6000) is the floor.
    pub session_timeout_ms: u32,
    /// Classic protocol: heartbeat period, a third of the session or less.
    pub heartbeat_interval_ms: u32,
}

impl Default for Membership {
    fn default() -> Self {
        Membership {
            protocol: GroupProtocol::Classic,
            static_membership: true,
            // The smallest session a broker with default settings accepts.
            session_timeout_ms: 6000,
            heartbeat_interval_ms: 1500,
        }
    }
}

impl Membership {
    /// librdkafka settings for a consumer of worker `worker_id`. They are defaults: the
    /// passthrough `[kafka] options` apply after them and may change them.
    pub fn settings(&self, worker_id: &str) -> Vec<(&'static str, String)> {
        let mut settings = vec![("group.protocol", self.protocol.as_str().to_string())];
        if self.static_membership {
            settings.push(("group.instance.id", worker_id.to_string()));
        }
        if self.protocol == GroupProtocol::Classic {
            // With KIP-848 librdkafka refuses these three: the broker owns them.
            settings.extend([
                ("session.timeout.ms", self.session_timeout_ms.to_string()),
                (
                    "heartbeat.interval.ms",
                    self.heartbeat_interval_ms.to_string(),
                ),
                // Incremental: a joining or leaving member moves only the partitions that
                // change owner; the others keep flowing through the rebalance.
                ("partition.assignment.strategy", "cooperative-sticky".into()),
            ]);
        }
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(settings: &'a [(&str, String)], key: &str) -> Option<&'a str> {
        settings
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn classic_defaults_are_static_short_and_cooperative() {
        let s = Membership::default().settings("worker-1");
        assert_eq!(get(&s, "group.protocol"), Some("classic"));
        assert_eq!(get(&s, "group.instance.id"), Some("worker-1"));
        assert_eq!(get(&s, "session.timeout.ms"), Some("6000"));
        assert_eq!(get(&s, "heartbeat.interval.ms"), Some("1500"));
        assert_eq!(
            get(&s, "partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
    }

    #[test]
    fn the_consumer_protocol_leaves_session_and_assignment_to_the_broker() {
        let m = Membership {
            protocol: GroupProtocol::Consumer,
            static_membership: false,
            ..Membership::default()
        };
        let s = m.settings("w");
        assert_eq!(get(&s, "group.protocol"), Some("consumer"));
        for key in [
            "group.instance.id",
            "session.timeout.ms",
            "heartbeat.interval.ms",
            "partition.assignment.strategy",
        ] {
            assert_eq!(get(&s, key), None, "{key}");
        }
    }

    fn parse(toml: &str) -> Result<Membership, Box<figment::Error>> {
        use figment::providers::{Format, Toml};
        Ok(figment::Figment::from(Toml::string(toml)).extract()?)
    }

    #[test]
    fn parses_from_toml() {
        let m = parse("protocol = \"consumer\"\nstatic_membership = false").unwrap();
        assert_eq!(m.protocol, GroupProtocol::Consumer);
        assert!(!m.static_membership);
        assert_eq!(m.session_timeout_ms, 6000);
        assert!(parse("session_timeout = 1").is_err());
    }
}
