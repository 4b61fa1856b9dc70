//! Types shared by Hafen's host tools and `hafen-init`.
//!
//! The image `hafen build` writes and the guest `hafen-init` reads meet here:
//! the subset of the OCI runtime spec Hafen understands ([`spec`]), the
//! `org.hafen.*` annotations that carry Hafen's policy ([`annotations`]),
//! where things live in the guest ([`layout`]) and signal names ([`signal`]).
//! Keeping them in one crate means the two sides cannot drift apart.

pub mod annotations;
pub mod capability;
pub mod image;
pub mod layout;
pub mod rlimit;
pub mod signal;
pub mod spec;
