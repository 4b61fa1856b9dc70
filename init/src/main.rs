//! `hafen-init`: with no arguments, the guest's PID 1 (system mode); with a
//! command, a tiny init for one child (`hafen-init [OPTIONS] [--] CMD [ARGS...]`).

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        hafen_init::system::main()
    } else {
        std::process::exit(hafen_init::tiny::main(args))
    }
}
