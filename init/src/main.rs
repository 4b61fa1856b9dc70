//! `hafen-init` chooses its mode from its arguments, unambiguously:
//! - no arguments: the guest's PID 1 (system mode);
//! - `runtime ...`: the OCI runtime command line;
//! - anything else: a tiny init for one child (`hafen-init [OPTIONS] [--] CMD [ARGS...]`).
//!   To run a program that is itself called `runtime`, put `--` before it.

fn main() {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        hafen_init::system::main()
    } else if args[0] == "runtime" {
        args.remove(0);
        std::process::exit(hafen_init::runtime::main(args))
    } else {
        std::process::exit(hafen_init::tiny::main(args))
    }
}
