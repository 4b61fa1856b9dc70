//! Types shared by Hafen's host tools and `hafen-init`.
//!
//! The image `hafen build` writes and the guest `hafen-init` reads meet here:
//! the subset of the OCI runtime spec Hafen understands ([`spec`]), the
//! `org.hafen.*` annotations that carry Hafen's policy ([`annotations`]),
//! where things live in the guest ([`layout`]), signal names ([`signal`]),
//! the network plan PID 1 carries out ([`net`]),
//! and the control channel between the host's monitor and PID 1: its frames
//! ([`frame`]) and messages ([`control`]).
//! Keeping them in one crate means the two sides cannot drift apart.

pub mod annotations;
pub mod build;
mod bytes;
pub mod capability;
pub mod control;
pub mod frame;
pub mod image;
pub mod layout;
pub mod net;
pub mod rlimit;
pub mod seccomp;
pub mod signal;
pub mod spec;
pub mod supervision;
mod syscalls;
pub mod time;
