//! Tiny-init mode: run one command as our child, forward signals, reap zombies.

use std::ffi::OsString;

/// Runs the tiny init with the arguments after the program name; returns the exit code.
pub fn main(_args: Vec<OsString>) -> i32 {
    eprintln!("hafen-init: tiny-init mode is not implemented yet");
    1
}
