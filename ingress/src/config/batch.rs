//! `[batch]`: the batch APIs' caps and quotas.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchLimits {
    /// Lines of one input file, and requests of one batch (Anthropic's limit is 100,000;
    /// OpenAI's 50,000).
    pub max_lines_per_batch: u64,
    /// Batches created from one input file.
    pub max_batches_per_file: u64,
    /// A team's batches whose driver has not finished publishing their lines.
    pub max_open_batches_per_team: u64,
    /// Bytes of input files a team stores at once (deleted files do not count).
    pub max_file_bytes_per_team: u64,
    /// Lines of input files a team stores at once.
    pub max_file_lines_per_team: u64,
    /// Large bodies (file uploads, inline Anthropic batches) one replica reads at once;
    /// more get a 429.
    pub max_concurrent_uploads: usize,
    /// Deepest JSON nesting of one inline Anthropic batch request.
    pub max_nesting_depth: usize,
    /// Times a driver tries a block of lines (across restarts) before the block's lines
    /// without a receipt fail with `publish_attempts_exhausted`.
    pub max_publish_attempts: u32,
}

impl Default for BatchLimits {
    fn default() -> BatchLimits {
        BatchLimits {
            max_lines_per_batch: 100_000,
            max_batches_per_file: 10,
            max_open_batches_per_team: 20,
            max_file_bytes_per_team: 10 * 1024 * 1024 * 1024,
            max_file_lines_per_team: 2_000_000,
            max_concurrent_uploads: 4,
            max_nesting_depth: 64,
            max_publish_attempts: 10,
        }
    }
}
