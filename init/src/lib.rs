//! hafen-init: Hafen's PID 1 and tiny init.
//!
//! With no arguments it is the guest's PID 1 ([`system`]); with a command it
//! is a tiny init for one child ([`tiny`]).

#[macro_use]
pub mod log;

pub mod bringup;
pub mod build;
pub mod bundle;
pub mod container;
pub mod control;
pub mod input;
pub mod logs;
pub mod mount;
pub mod net;
pub mod runtime;
pub mod supervisor;
pub mod sys;
pub mod system;
pub mod tiny;
pub mod volume;
