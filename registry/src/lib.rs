//! `hafen-registry`: image references in docker's rules and a client for
//! the Docker Registry HTTP API v2 / OCI distribution spec.

pub mod reference;

pub use reference::{Reference, ReferenceError, ReferenceErrorKind};
