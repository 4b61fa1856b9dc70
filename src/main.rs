//! `hafen`: build a bootable image from a `hafen.toml` manifest and run it in QEMU.
//!
//! This binary only parses arguments; the work is in `hafen-image-build` and
//! `hafen-qemu`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "hafen",
    version,
    about = "Boot a machine straight into its containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an image directory (kernel, initramfs, image.json) from a manifest.
    Build(BuildArgs),
    /// Boot a built image in QEMU with its console on this terminal.
    ///
    /// Ctrl-C or SIGTERM shuts the guest down gracefully; a second one forces it off.
    /// Exits 0 after a clean guest power-off.
    Run(RunArgs),
    /// Work with OCI images.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// The manifest (hafen.toml).
    manifest: PathBuf,
    /// Directory to write; replaced as a whole only when the build succeeds.
    #[arg(short, long)]
    out: PathBuf,
    /// Kernel: a directory holding vmlinux (and bzImage), or a vmlinux file.
    /// Default: $HAFEN_KERNEL, then the cache kernel-config/build.sh fills.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The static hafen-init binary to put in the image.
    /// Default: $HAFEN_INIT, then the musl build next to this executable.
    #[arg(long)]
    init: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// An image directory written by `hafen build`.
    image: PathBuf,
    /// Guest memory in MiB (default: what the image asks for).
    #[arg(short, long)]
    memory: Option<u32>,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Accelerator: `auto` uses KVM when a probe boot works, TCG otherwise.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    accel: AccelArg,
    /// Show the kernel's own messages (the default is quiet).
    #[arg(short, long)]
    verbose: bool,
    /// Extra kernel command-line words.
    #[arg(long = "append", value_name = "WORD")]
    append: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Make an OCI image layout from a root filesystem directory or tar.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// A directory or a tar archive (optionally gzip-compressed) holding the root filesystem.
    rootfs: PathBuf,
    /// The OCI image layout directory to create or add to.
    #[arg(short, long)]
    out: PathBuf,
    /// Tag recorded as org.opencontainers.image.ref.name.
    #[arg(long)]
    tag: Option<String>,
    /// Entrypoint, one argument per use (--entrypoint /bin/sh --entrypoint -c).
    #[arg(long, allow_hyphen_values = true)]
    entrypoint: Vec<String>,
    /// Default command, one argument per use.
    #[arg(long, allow_hyphen_values = true)]
    cmd: Vec<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long)]
    env: Vec<String>,
    /// Working directory.
    #[arg(long)]
    workdir: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            print_error_chain(err.as_ref());
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Build(args) => {
            let summary = hafen_image_build::build(&hafen_image_build::BuildOptions {
                manifest: args.manifest,
                out: args.out,
                kernel: args.kernel,
                init: args.init,
            })?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let outcome = hafen_qemu::run(&hafen_qemu::RunOptions {
                image: args.image,
                memory_mib: args.memory,
                cpus: args.cpus,
                accel: match args.accel {
                    AccelArg::Auto => hafen_qemu::Accel::Auto,
                    AccelArg::Kvm => hafen_qemu::Accel::Kvm,
                    AccelArg::Tcg => hafen_qemu::Accel::Tcg,
                },
                verbose: args.verbose,
                append: args.append,
            })?;
            eprintln!("hafen: {outcome}");
            Ok(if outcome.is_clean_power_off() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Image(ImageCommand::Import(args)) => {
            let summary = hafen_image_build::import(&hafen_image_build::ImportOptions {
                rootfs: args.rootfs,
                layout: args.out,
                tag: args.tag,
                entrypoint: (!args.entrypoint.is_empty()).then_some(args.entrypoint),
                cmd: (!args.cmd.is_empty()).then_some(args.cmd),
                env: args.env,
                workdir: args.workdir,
            })?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints an error and each of its causes on a line of its own.
fn print_error_chain(err: &dyn std::error::Error) {
    eprintln!("hafen: error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
}
