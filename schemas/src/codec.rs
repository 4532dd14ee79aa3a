//! Avro single-object encoding: `C3 01`, the writer schema's 8-byte CRC-64-AVRO (Rabin)
//! fingerprint, then the Avro binary datum.
//!
//! Evolution rule (checked by tests): a new version of a record only appends fields with
//! defaults. So a reader resolves any older version it knows by fingerprint, and reads a
//! newer version it does not know yet as its own latest schema followed by fields it ignores.

use std::io::Cursor;
use std::sync::LazyLock;

use apache_avro::rabin::Rabin;
use apache_avro::{
    from_avro_datum, from_value, write_avro_datum_ref, GenericSingleObjectReader, Schema,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::CodecError;
use crate::records::{
    ApiKey, Attempt, Audit, BudgetAlert, Cancel, Request, Result as ResultRecord, StreamChunk,
    Usage,
};

const MARKER: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

/// The schema versions of one record type this build knows, oldest first.
pub struct SchemaSet {
    versions: Vec<Version>,
}

/// One known schema version, with its reader: `apache_avro::from_avro_datum` works out the
/// schema's named types on every call (and again to resolve against a reader schema), which
/// was a fifth of the ingress's own CPU under load; the reader does it once.
struct Version {
    fingerprint: u64,
    schema: Schema,
    reader: GenericSingleObjectReader,
}

impl SchemaSet {
    /// Parses embedded `.avsc` texts. They are compiled in and covered by tests, so a parse
    /// failure is a build defect, not a runtime condition.
    #[expect(
        clippy::expect_used,
        reason = "the schemas are compiled in and tested: a parse failure is a build defect"
    )]
    fn parse(texts: &[&str]) -> SchemaSet {
        let versions = texts
            .iter()
            .map(|text| {
                let schema = Schema::parse_str(text).expect("embedded Avro schema must parse");
                let reader = GenericSingleObjectReader::new(schema.clone())
                    .expect("embedded Avro schema must resolve");
                Version {
                    fingerprint: fingerprint(&schema),
                    schema,
                    reader,
                }
            })
            .collect();
        SchemaSet { versions }
    }

    /// The schema this build writes.
    pub fn current(&self) -> &Schema {
        &self.latest().schema
    }

    pub fn current_fingerprint(&self) -> u64 {
        self.latest().fingerprint
    }

    fn latest(&self) -> &Version {
        // `parse` is always given at least one text.
        &self.versions[self.versions.len() - 1]
    }

    /// Every known version, oldest first.
    pub fn versions(&self) -> impl Iterator<Item = &Schema> {
        self.versions.iter().map(|v| &v.schema)
    }

    fn find(&self, fingerprint: u64) -> Option<&Version> {
        self.versions.iter().find(|v| v.fingerprint == fingerprint)
    }
}

/// CRC-64-AVRO fingerprint of a schema's canonical form.
pub fn fingerprint(schema: &Schema) -> u64 {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(fp)
}

/// A Kafka message type with embedded Avro schemas.
pub trait Record: Serialize + DeserializeOwned {
    const NAME: &'static str;
    fn schemas() -> &'static SchemaSet;
}

macro_rules! record {
    ($ty:ty, $name:literal, [$($file:literal),+]) => {
        impl Record for $ty {
            const NAME: &'static str = $name;
            fn schemas() -> &'static SchemaSet {
                static SET: LazyLock<SchemaSet> = LazyLock::new(|| {
                    SchemaSet::parse(&[$(include_str!(concat!("../avro/", $file))),+])
                });
                &SET
            }
        }
    };
}

record!(
    Request,
    "Request",
    ["request.v1.avsc", "request.v2.avsc", "request.v3.avsc"]
);
record!(
    ResultRecord,
    "Result",
    [
        "result.v1.avsc",
        "result.v2.avsc",
        "result.v3.avsc",
        "result.v4.avsc",
        "result.v5.avsc",
        "result.v6.avsc"
    ]
);
record!(
    Usage,
    "Usage",
    [
        "usage.v1.avsc",
        "usage.v2.avsc",
        "usage.v3.avsc",
        "usage.v4.avsc"
    ]
);
record!(
    StreamChunk,
    "StreamChunk",
    ["stream_chunk.v1.avsc", "stream_chunk.v2.avsc"]
);
record!(Cancel, "Cancel", ["cancel.v1.avsc"]);
record!(Audit, "Audit", ["audit.v1.avsc", "audit.v2.avsc"]);
record!(BudgetAlert, "BudgetAlert", ["budget_alert.v1.avsc"]);
record!(ApiKey, "ApiKey", ["api_key.v1.avsc"]);
record!(Attempt, "Attempt", ["attempt.v1.avsc"]);

/// Encodes a record with the current schema.
pub fn encode<T: Record>(record: &T) -> Result<Vec<u8>, CodecError> {
    let set = T::schemas();
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(&MARKER);
    buf.extend_from_slice(&set.current_fingerprint().to_le_bytes());
    write_avro_datum_ref(set.current(), record, &mut buf).map_err(|e| CodecError::Encode {
        record: T::NAME,
        source: Box::new(e),
    })?;
    Ok(buf)
}

/// Decodes a record written by any version this build knows, or by a newer one.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::TooShort { len: bytes.len() });
    }
    if bytes[..2] != MARKER {
        return Err(CodecError::BadMarker);
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    let fingerprint = u64::from_le_bytes(fp);
    let set = T::schemas();
    let decode_err = |e| CodecError::Decode {
        record: T::NAME,
        source: Box::new(e),
    };
    let value = match set.find(fingerprint) {
        Some(writer) => {
            // The reader checks the header again and decodes the datum after it.
            let mut cursor = Cursor::new(bytes);
            let value = writer.reader.read_value(&mut cursor).map_err(decode_err)?;
            let trailing = bytes.len() - cursor.position() as usize;
            if trailing != 0 {
                return Err(CodecError::TrailingBytes {
                    record: T::NAME,
                    trailing,
                });
            }
            // An older version resolves to the current one (its defaults filled in); the
            // current one is already in shape.
            if writer.fingerprint == set.current_fingerprint() {
                value
            } else {
                value.resolve(set.current()).map_err(decode_err)?
            }
        }
        // A newer writer: its fields start with ours (append-only evolution).
        None => {
            let mut cursor = Cursor::new(&bytes[HEADER_LEN..]);
            from_avro_datum(set.current(), &mut cursor, None).map_err(|_| {
                CodecError::UnknownSchema {
                    record: T::NAME,
                    fingerprint,
                }
            })?
        }
    };
    from_value(&value).map_err(decode_err)
}
