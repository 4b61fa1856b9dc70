//! Byte buffers as one piece for serde (`#[serde(with = "crate::bytes")]`):
//! a `Vec<u8>` is otherwise a sequence, serialized one element at a time,
//! which log and exec streams pay for on every byte. With postcard the
//! wire form is the same either way: a varint length, then the bytes.

use core::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// Serializes `bytes` as one byte string.
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Deserializes a byte string (or a sequence of bytes).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // A peer's length is not trusted for the allocation.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsSeq {
        data: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsBytes {
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    }

    #[test]
    fn the_wire_form_is_the_same_as_a_sequence_of_bytes() {
        let data: Vec<u8> = (0..=255).collect();
        let seq = postcard::to_allocvec(&AsSeq { data: data.clone() }).expect("encode");
        let bytes = postcard::to_allocvec(&AsBytes { data: data.clone() }).expect("encode");
        assert_eq!(seq, bytes);
        let back: AsBytes = postcard::from_bytes(&seq).expect("decode");
        assert_eq!(back.data, data);
    }
}
