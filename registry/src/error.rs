//! What can go wrong talking to a registry, each with the reference, the
//! registry and what to do.

use std::time::Duration;

use crate::credentials::CredentialsError;

/// The cause of a failed connection (a ureq transport error or an I/O
/// error while reading a body).
pub type TransportError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The repository, tag or digest does not exist.
    #[error("{reference}: not found in {registry}: check the name and tag")]
    NotFound {
        /// The image reference.
        reference: String,
        /// The registry.
        registry: String,
    },
    /// A blob the manifest names is missing from the registry.
    #[error(
        "{reference}: blob {digest} is missing from {registry}: the image there is incomplete; \
         push it again"
    )]
    BlobNotFound {
        /// The image reference.
        reference: String,
        /// The registry.
        registry: String,
        /// The blob.
        digest: String,
    },
    /// The registry refused the credentials it was given.
    #[error("wrong credentials for {registry}: hafen login {registry}")]
    WrongCredentials {
        /// The registry.
        registry: String,
    },
    /// The registry wants credentials and none are known.
    #[error(
        "{what}: {registry} requires authentication (or the repository does not exist): \
         check the name, or hafen login {registry}"
    )]
    AuthRequired {
        /// What was asked for (the reference, or the registry).
        what: String,
        /// The registry.
        registry: String,
    },
    /// Authenticated, but not allowed.
    #[error(
        "{what}: access denied by {registry}: check the name and that this account may use \
         it (hafen login {registry})"
    )]
    Denied {
        /// What was asked for.
        what: String,
        /// The registry.
        registry: String,
    },
    /// No connection could be made.
    #[error("{registry} is not reachable")]
    Unreachable {
        /// The registry (or the host a token or redirect led to).
        registry: String,
        /// The cause.
        #[source]
        source: TransportError,
    },
    /// The TLS handshake failed (an unknown CA, a wrong name, or no TLS).
    #[error(
        "TLS connection to {registry} failed: if it uses a private CA, put the CA certificate \
         in {certs_hint}/{registry}/ca.crt; a plain-HTTP registry must be marked insecure"
    )]
    Tls {
        /// The registry.
        registry: String,
        /// The per-registry CA directory to suggest.
        certs_hint: String,
        /// The cause.
        #[source]
        source: TransportError,
    },
    /// The connection broke and retries did not help.
    #[error("{what}: the connection to {registry} failed after {attempts} attempt(s)")]
    Connection {
        /// What was being done.
        what: String,
        /// The registry.
        registry: String,
        /// How many tries were made.
        attempts: u32,
        /// The cause.
        #[source]
        source: TransportError,
    },
    /// An answer Hafen did not expect.
    #[error("{what}: {registry} answered {status}{}{}", if message.is_empty() { "" } else { ": " }, message)]
    Status {
        /// What was being done.
        what: String,
        /// The registry.
        registry: String,
        /// The HTTP status.
        status: u16,
        /// The registry's own explanation, if it gave one.
        message: String,
        /// The `Retry-After` it asked for.
        retry_after: Option<Duration>,
    },
    /// A blob's content does not have the digest its descriptor names.
    #[error(
        "{reference}: blob {digest} from {registry} has digest {actual}: the download is \
         corrupt or the registry's copy is damaged; nothing was kept"
    )]
    DigestMismatch {
        /// The image reference.
        reference: String,
        /// The registry.
        registry: String,
        /// The expected digest.
        digest: String,
        /// What it hashed to.
        actual: String,
    },
    /// A blob is larger than its descriptor says.
    #[error(
        "{reference}: blob {digest} from {registry} is larger than the {expected} bytes its \
         manifest states; nothing was kept"
    )]
    TooLarge {
        /// The image reference.
        reference: String,
        /// The registry.
        registry: String,
        /// The blob.
        digest: String,
        /// The size the manifest states.
        expected: u64,
    },
    /// A download ended early, every time it was tried.
    #[error(
        "{reference}: download of blob {digest} from {registry} stopped at {received} of \
         {expected} bytes; try again"
    )]
    Truncated {
        /// The image reference.
        reference: String,
        /// The registry.
        registry: String,
        /// The blob.
        digest: String,
        /// Bytes received.
        received: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// A manifest's bytes do not hash to the digest asked for or announced.
    #[error(
        "{reference}: the manifest {registry} served has digest {actual}, not {expected}: \
         the registry or something between is tampering or broken"
    )]
    ManifestDigestMismatch {
        /// The image reference.
        reference: String,
        /// The registry.
        registry: String,
        /// The digest asked for (or the one the registry announced).
        expected: String,
        /// The digest of the bytes.
        actual: String,
    },
    /// A manifest of a type Hafen cannot use.
    #[error(
        "{reference}: {registry} served a manifest of media type {media_type}, which hafen does \
         not support (OCI image index or manifest, Docker manifest list or schema 2 manifest)"
    )]
    UnsupportedMediaType {
        /// The image reference.
        reference: String,
        /// The registry.
        registry: String,
        /// Its media type.
        media_type: String,
    },
    /// A manifest that does not parse.
    #[error("{reference}: the manifest from {registry} is malformed")]
    InvalidManifest {
        /// The image reference.
        reference: String,
        /// The registry.
        registry: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The index has no image for the platform asked for.
    #[error("{reference}: no image for platform {platform}; it has {available}: choose one with --platform")]
    PlatformNotFound {
        /// The image reference.
        reference: String,
        /// The platform asked for.
        platform: String,
        /// The platforms the index offers.
        available: String,
    },
    /// The registry broke the protocol (a missing header, a bad answer).
    #[error("{what}: {registry} {message}")]
    Protocol {
        /// What was being done.
        what: String,
        /// The registry.
        registry: String,
        /// What it did wrong.
        message: String,
    },
    /// Writing a downloaded blob failed.
    #[error("{reference}: cannot store blob {digest}")]
    Sink {
        /// The image reference.
        reference: String,
        /// The blob.
        digest: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading a blob to upload failed.
    #[error("{reference}: cannot read blob {digest} to push it")]
    Source {
        /// The image reference.
        reference: String,
        /// The blob.
        digest: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A per-registry CA certificate could not be used.
    #[error("{registry}: cannot use CA certificate {}", path.display())]
    Certificate {
        /// The registry.
        registry: String,
        /// The certificate file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading credentials failed.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

impl RegistryError {
    /// Whether trying again may help: a broken connection, a truncated
    /// body, 408, 429 and 5xx answers.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Connection { .. } | RegistryError::Truncated { .. } => true,
            RegistryError::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            _ => false,
        }
    }

    /// The same error, counting `attempts` tries for a connection failure.
    pub(crate) fn after_attempts(self, attempts: u32) -> RegistryError {
        match self {
            RegistryError::Connection {
                what,
                registry,
                source,
                ..
            } => RegistryError::Connection {
                what,
                registry,
                attempts,
                source,
            },
            other => other,
        }
    }

    /// The delay a 429 or 503 answer asked for.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
