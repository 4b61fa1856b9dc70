//! `hafen-registry`: image references in docker's rules and a client for
//! the Docker Registry HTTP API v2 / OCI distribution spec.
//!
//! The client is synchronous (ureq over rustls); [`Client`] is shared by
//! the threads of a parallel transfer. A pull is [`Client::resolve`] (the
//! manifest for a platform) then [`Client::pull_blobs`] into
//! [`BlobSink`]s the caller commits; a push is [`Client::push_blobs`] then
//! [`Client::push_manifest`].

pub mod auth;
pub mod blob;
pub mod client;
pub mod credentials;
pub mod error;
pub mod login;
pub mod manifest;
pub mod progress;
pub mod pull;
pub mod push;
pub mod reference;
pub mod tls;

pub use blob::{BlobSink, BlobSource, FileSink};
pub use client::{Client, ClientOptions, RetryPolicy};
pub use credentials::{AuthFiles, Credential, CredentialsError};
pub use error::RegistryError;
pub use manifest::{media, Descriptor, ImageManifest, Index, Platform};
pub use progress::{NoProgress, Outcome, PlainProgress, Progress, TerminalProgress};
pub use pull::{BlobJob, Manifest, ManifestContent, ResolvedImage};
pub use push::{BlobPush, PushJob};
pub use reference::{Reference, ReferenceError, ReferenceErrorKind};
