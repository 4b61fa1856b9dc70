//! `hafen-init` chooses its mode from its name and arguments, unambiguously:
//! - called as `hafen-runtime` (the file name of argv[0], e.g. through a
//!   symlink to hafen-init): the OCI runtime command line, with every
//!   argument passed on, so the symlink is a drop-in `--runtime` for podman,
//!   conmon or containerd, which call a runtime binary with OCI commands;
//! - called as `hafen-volume-copy`: the volume copier PID 1 starts for
//!   `hafen volume export|import` (init/src/volume/copy.rs);
//! - called as `hafen-build`: the build helper a builder VM's PID 1 starts
//!   for each build op (init/src/build/);
//! - no arguments: the guest's PID 1 (system mode);
//! - `runtime ...`: the OCI runtime command line;
//! - anything else: a tiny init for one child (`hafen-init [OPTIONS] [--] CMD [ARGS...]`).
//!   To run a program that is itself called `runtime`, put `--` before it.

use std::ffi::OsString;
use std::path::Path;

/// The program name that selects the OCI runtime command line.
const RUNTIME_NAME: &str = "hafen-runtime";

fn main() {
    let mut args_os = std::env::args_os();
    let argv0 = args_os.next().unwrap_or_default();
    let mut args: Vec<OsString> = args_os.collect();
    let program = Path::new(&argv0).file_name();
    if program == Some(RUNTIME_NAME.as_ref()) {
        std::process::exit(hafen_init::runtime::main(args))
    } else if program == Some(hafen_init::volume::copy::PROGRAM_NAME.as_ref()) {
        std::process::exit(hafen_init::volume::copy::main(args))
    } else if program == Some(hafen_init::build::HELPER_NAME.as_ref()) {
        std::process::exit(hafen_init::build::main(args))
    } else if args.is_empty() {
        hafen_init::system::main()
    } else if args[0] == "runtime" {
        args.remove(0);
        std::process::exit(hafen_init::runtime::main(args))
    } else {
        std::process::exit(hafen_init::tiny::main(args))
    }
}
