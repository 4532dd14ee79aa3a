//! ClickHouse databases and the tables both the ingress and analytics name.
//!
//! Sluice keeps two databases (docs/security.md): `<db>`, the analyst-facing tables and views
//! (results without their bodies, usage, audit, budget alerts), and `<db>_private`, what only
//! the ingress reads and writes: completion bodies for the async API, the batch tables and
//! uploaded files. ClickHouse 18.16 has no per-table rights, only `allow_databases` per user,
//! so a database is the unit of access. Analytics' own tables are in
//! `sluice_analytics::Table`.

/// Suffix of the private database's name.
pub const PRIVATE_SUFFIX: &str = "_private";

/// The private database that goes with the analyst database `db`.
pub fn private_database(db: &str) -> String {
    format!("{db}{PRIVATE_SUFFIX}")
}

/// Tables of the private database. Those holding content are partitioned by the day they
/// expire (`expires_at`) and dropped after it (see `sluice_analytics::retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrivateTable {
    /// A request's final status and its whole response body (`GET /v1/requests/{id}`, batch
    /// outputs). Written by the sink; expires.
    ResultBodies,
    /// Requests the ingress accepted (from `accepted` audit events): "queued" until their
    /// result lands. Written by the sink; expires.
    AcceptedRequests,
    /// Uploaded files (expire with their lines).
    BatchFiles,
    /// The lines of uploaded files: caller content; expire.
    BatchFileLines,
    Batches,
    BatchCancels,
    BatchLines,
    /// Stored conversations of the Responses API: the input items a stored response was
    /// answered from (caller content; expires).
    ConversationInputs,
}

impl PrivateTable {
    pub const ALL: [PrivateTable; 8] = [
        PrivateTable::ResultBodies,
        PrivateTable::AcceptedRequests,
        PrivateTable::BatchFiles,
        PrivateTable::BatchFileLines,
        PrivateTable::Batches,
        PrivateTable::BatchCancels,
        PrivateTable::BatchLines,
        PrivateTable::ConversationInputs,
    ];

    /// The tables whose rows carry `expires_at` and are partitioned by its day.
    pub const EXPIRING: [PrivateTable; 5] = [
        PrivateTable::ResultBodies,
        PrivateTable::AcceptedRequests,
        PrivateTable::BatchFiles,
        PrivateTable::BatchFileLines,
        PrivateTable::ConversationInputs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PrivateTable::ResultBodies => "result_bodies",
            PrivateTable::AcceptedRequests => "accepted_requests",
            PrivateTable::BatchFiles => "batch_files",
            PrivateTable::BatchFileLines => "batch_file_lines",
            PrivateTable::Batches => "batches",
            PrivateTable::BatchCancels => "batch_cancels",
            PrivateTable::BatchLines => "batch_lines",
            PrivateTable::ConversationInputs => "conversation_inputs",
        }
    }

    /// `<private database>.<table>` for the analyst database `db`.
    pub fn qualified(self, db: &str) -> String {
        format!("{}.{}", private_database(db), self.name())
    }
}

/// `expires_at` (seconds since the epoch, a ClickHouse `DateTime`) of content created at
/// `created_at_ms` and kept for `days`.
pub fn expires_at(created_at_ms: i64, days: u32) -> u32 {
    let secs = created_at_ms.max(0) / 1000 + i64::from(days) * 86_400;
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(private_database("sluice"), "sluice_private");
        assert_eq!(
            PrivateTable::BatchLines.qualified("s"),
            "s_private.batch_lines"
        );
        assert_eq!(expires_at(1_700_000_000_999, 2), 1_700_000_000 + 172_800);
        assert_eq!(expires_at(-5, 0), 0);
    }
}
