//! hafen-init: Hafen's PID 1 and tiny init.

pub mod system;
pub mod tiny;
