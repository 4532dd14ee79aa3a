use thiserror::Error;

/// Why a message could not be encoded or decoded.
#[derive(Debug, Error)]
pub enum CodecError {
    #[error("message is {len} bytes, shorter than the 10-byte single-object header")]
    TooShort { len: usize },
    #[error("message does not start with the Avro single-object marker C3 01")]
    BadMarker,
    #[error("message was written with schema fingerprint {fingerprint:016x}, which is not a {record} schema this build knows")]
    UnknownSchema {
        record: &'static str,
        fingerprint: u64,
    },
    #[error("message body is not a valid {record} record")]
    Decode {
        record: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("{record} record could not be encoded")]
    Encode {
        record: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("{record} record has {trailing} bytes after its last field")]
    TrailingBytes {
        record: &'static str,
        trailing: usize,
    },
}
