//! The control channel's messages: what the host's monitor and the guest's
//! PID 1 say to each other over the virtio-serial port, one postcard-encoded
//! [`Envelope`] per frame ([`crate::frame`]).
//!
//! Every (re)connection starts with the host's [`Body::Sync`] carrying a
//! fresh nonce; the guest answers [`Body::Hello`] with the same nonce, its
//! protocol version and capabilities. Everything the host reads before that
//! Hello is stale (bytes the guest wrote for a client that went away) and is
//! dropped. Requests carry ids the host chooses, so several requests and
//! streams share the channel; every answer and stream frame names the id it
//! belongs to.
//!
//! The verbs (ps, logs, exec, ...) are added here as the guest serves them.

use serde::{Deserialize, Serialize};

use crate::frame;

/// The protocol version this build speaks. A peer with another one is
/// refused with a message that says which side to update.
pub const PROTOCOL_VERSION: u32 = 1;

/// One message and the request it belongs to (0: the channel itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The request id, chosen by the host.
    pub id: u32,
    /// The message.
    pub body: Body,
}

/// What a frame says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Host to guest, first on every connection: answer with this nonce.
    Sync {
        /// Chosen afresh by the host for each connection.
        nonce: u64,
    },
    /// Guest to host, the answer to [`Body::Sync`].
    Hello {
        /// The nonce of the Sync it answers.
        nonce: u64,
        /// The guest's [`PROTOCOL_VERSION`].
        version: u32,
        /// What the guest can do (verb names), for hosts newer than it.
        capabilities: Vec<String>,
    },
    /// The request `id` (or, with id 0, the frame just read) failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// For the user.
        message: String,
    },
    /// Host to guest: stop the stream or request `id`.
    Cancel,
}

/// Kinds of [`Body::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// A frame that was not a message (garbage, oversized, corrupt,
    /// undecodable); the channel goes on with the next frame.
    BadFrame,
    /// A message this side does not know (a newer peer).
    Unsupported,
    /// No such container (or exec session).
    NotFound,
    /// The request is valid but failed.
    Failed,
    /// Too many requests or streams at once; try again later.
    Busy,
}

/// A message that could not be turned into a frame or back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// Encoding failed or the message is too large for a frame.
    Encode(String),
    /// The payload is not a message of this protocol.
    Decode(String),
}

impl core::fmt::Display for CodecError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CodecError::Encode(e) => write!(f, "cannot encode a control message: {e}"),
            CodecError::Decode(e) => write!(f, "not a control message: {e}"),
        }
    }
}

impl std::error::Error for CodecError {}

impl Envelope {
    /// This message as one frame, ready to write.
    pub fn to_frame(&self) -> Result<Vec<u8>, CodecError> {
        let payload = postcard::to_allocvec(self).map_err(|e| CodecError::Encode(e.to_string()))?;
        let header = frame::header(&payload).map_err(|e| CodecError::Encode(e.to_string()))?;
        let mut out = Vec::with_capacity(frame::HEADER + payload.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Decodes a frame's payload; trailing bytes are an error.
    pub fn from_payload(payload: &[u8]) -> Result<Envelope, CodecError> {
        match postcard::take_from_bytes::<Envelope>(payload) {
            Ok((envelope, [])) => Ok(envelope),
            Ok((_, rest)) => Err(CodecError::Decode(format!(
                "{} bytes after the message",
                rest.len()
            ))),
            Err(e) => Err(CodecError::Decode(e.to_string())),
        }
    }
}

/// Why a guest's Hello is not the one this host can talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloError {
    /// The answer is to another Sync: stale bytes; keep reading.
    Stale,
    /// Another protocol version.
    Version {
        /// The guest's.
        guest: u32,
    },
}

impl core::fmt::Display for HelloError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HelloError::Stale => f.write_str("an answer to an earlier connection"),
            HelloError::Version { guest } if *guest < PROTOCOL_VERSION => write!(
                f,
                "the guest speaks control protocol {guest}, this hafen speaks \
                 {PROTOCOL_VERSION}: rebuild the image with this hafen (hafen build)"
            ),
            HelloError::Version { guest } => write!(
                f,
                "the guest speaks control protocol {guest}, this hafen speaks \
                 {PROTOCOL_VERSION}: use the hafen that built the image, or update this one"
            ),
        }
    }
}

/// Checks the guest's answer to the Sync with `nonce`.
pub fn check_hello(body: &Body, nonce: u64) -> Result<(), HelloError> {
    match body {
        Body::Hello {
            nonce: n, version, ..
        } if *n == nonce => {
            if *version == PROTOCOL_VERSION {
                Ok(())
            } else {
                Err(HelloError::Version { guest: *version })
            }
        }
        _ => Err(HelloError::Stale),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Decoder, FrameError};

    fn hello(nonce: u64, version: u32) -> Envelope {
        Envelope {
            id: 0,
            body: Body::Hello {
                nonce,
                version,
                capabilities: vec!["ps".into(), "logs".into()],
            },
        }
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let messages = [
            Envelope {
                id: 0,
                body: Body::Sync { nonce: 42 },
            },
            hello(42, PROTOCOL_VERSION),
            Envelope {
                id: 7,
                body: Body::Error {
                    code: ErrorCode::NotFound,
                    message: "no container \"web\"".into(),
                },
            },
            Envelope {
                id: 7,
                body: Body::Cancel,
            },
        ];
        let mut stream = Vec::new();
        for m in &messages {
            stream.extend(m.to_frame().expect("encodes"));
        }
        let mut d: Decoder = Decoder::new();
        assert_eq!(d.feed(&stream), stream.len());
        let mut got = Vec::new();
        while let Some(frame) = d.next_frame() {
            got.push(Envelope::from_payload(frame.expect("a frame")).expect("decodes"));
        }
        assert_eq!(got, messages);
    }

    #[test]
    fn a_frame_that_is_not_a_message_is_an_error_not_a_panic() {
        for payload in [&b""[..], b"\xff\xff\xff\xff\xff", b"\x00\x09"] {
            assert!(Envelope::from_payload(payload).is_err(), "{payload:?}");
        }
        let mut extra = postcard::to_allocvec(&hello(1, 1)).expect("encodes");
        extra.push(0);
        assert!(matches!(
            Envelope::from_payload(&extra),
            Err(CodecError::Decode(m)) if m.contains("after the message")
        ));
        // A frame around garbage passes the frame checks, fails decoding.
        let mut out = vec![0u8; 64];
        let n = frame::encode(b"\xff\xfe\xfd", &mut out).expect("fits");
        let mut d: Decoder = Decoder::new();
        d.feed(&out[..n]);
        let payload = d.next_frame().expect("a frame").expect("well framed");
        assert!(Envelope::from_payload(payload).is_err());
        assert_eq!(d.next_frame(), None::<Result<&[u8], FrameError>>);
    }

    #[test]
    fn the_hello_must_answer_this_sync_in_this_version() {
        assert_eq!(check_hello(&hello(5, PROTOCOL_VERSION).body, 5), Ok(()));
        assert_eq!(
            check_hello(&hello(4, PROTOCOL_VERSION).body, 5),
            Err(HelloError::Stale)
        );
        let old = check_hello(&hello(5, 0).body, 5).expect_err("older guest");
        assert!(old.to_string().contains("hafen build"), "{old}");
        let new = check_hello(&hello(5, PROTOCOL_VERSION + 1).body, 5).expect_err("newer");
        assert!(new.to_string().contains("update"), "{new}");
    }
}
