//! `hafen`: build a bootable image from a `hafen.toml` manifest and run it in QEMU.
//!
//! This binary only parses arguments; the work is in `hafen-image-build` and
//! `hafen-qemu` (`hafen_qemu::client` for the verbs that operate a running VM).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hafen_qemu::client::{containers, events, exec, format, logs, stats, vm, volumes};

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
    /// Log in to a registry: the credentials are checked with it, then kept in
    /// $XDG_CONFIG_HOME/hafen/auth.json (mode 0600).
    Login(LoginArgs),
    /// Remove a registry's credentials from hafen's auth file.
    Logout(LogoutArgs),
    #[command(flatten)]
    Control(Control),
}

#[derive(Debug, Args)]
struct LoginArgs {
    /// The registry: `ghcr.io`, `localhost:5000`, `docker.io`.
    registry: String,
    /// The user name (asked for on a terminal when not given).
    #[arg(short, long)]
    username: Option<String>,
    /// Read the password from stdin instead of asking for it.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Debug, Args)]
struct LogoutArgs {
    /// The registry.
    registry: String,
}

/// The verbs that operate a running VM (through its monitor's api.sock).
#[derive(Debug, Subcommand)]
enum Control {
    /// List the running VMs.
    Ls(LsArgs),
    /// List a VM's containers.
    Ps(PsArgs),
    /// Print a VM's published ports (`80/tcp -> 127.0.0.1:8080`), or one container's.
    Port(InspectArgs),
    /// Print a container's output (stdout to stdout, stderr to stderr).
    Logs(LogsArgs),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// Stop a VM gracefully (the power button, then forced off after --time),
    /// or with CONTAINER one of its containers (its stop signal, then SIGKILL).
    Stop(StopArgs),
    /// Start a container that is not running.
    Start(StartArgs),
    /// Stop a container, then start it again.
    Restart(RestartArgs),
    /// Force a VM off at once, or with CONTAINER send its init a signal (default SIGKILL).
    Kill(KillArgs),
    /// Wait until a container stops, then print its exit code.
    Wait(ContainerArgs),
    /// Show a VM, or one of its containers, in detail (JSON).
    Inspect(InspectArgs),
    /// Show a container's processes.
    Top(ContainerArgs),
    /// Show containers' CPU, memory, process and block I/O use, refreshed every second.
    Stats(StatsArgs),
    /// Print what happens to a VM's containers as it happens, until Ctrl-C.
    Events(EventsArgs),
    /// A VM's volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// List a VM's volumes: where they live, what they use, who mounts them.
    Ls {
        /// The VM's name.
        vm: String,
    },
    /// Show one volume in detail (JSON).
    Inspect {
        /// The VM's name.
        vm: String,
        /// The volume's name.
        name: String,
    },
    /// Write a volume's content as a tar archive (stdout, or -o FILE). The
    /// running containers that mount it are paused meanwhile, so the copy
    /// is consistent.
    Export {
        /// The VM's name.
        vm: String,
        /// The volume's name.
        name: String,
        /// Write the archive to FILE (it appears only once complete).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Replace a volume's content with a tar archive (stdin, or -i FILE).
    /// No running container may mount it; a bad archive changes nothing.
    Import {
        /// The VM's name.
        vm: String,
        /// The volume's name (made when it does not exist yet).
        name: String,
        /// Read the archive from FILE.
        #[arg(short = 'i', long = "input", value_name = "FILE")]
        input: Option<PathBuf>,
    },
}

/// Output formats of the listing verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for programs.
    Json,
}

#[derive(Debug, Args)]
struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Args)]
struct PsArgs {
    /// The VM's name (`hafen ls`).
    vm: String,
    /// Every container, not only the running ones.
    #[arg(short, long)]
    all: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Args)]
struct LogsArgs {
    /// The VM's name.
    vm: String,
    /// The container's name.
    container: String,
    /// Keep printing new output until Ctrl-C or the container ends.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(short = 'n', long, value_name = "N")]
    tail: Option<u32>,
    /// Only output since a time (RFC 3339, Unix seconds) or for a duration back (10s, 5m, 1h).
    #[arg(long, value_name = "T")]
    since: Option<format::Since>,
    /// Prefix every line with its time (RFC 3339, UTC).
    #[arg(short, long)]
    timestamps: bool,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// Pass stdin to the command (end of input reaches it).
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal (with -i, this terminal goes raw and its size follows).
    #[arg(short, long)]
    tty: bool,
    /// Set an environment variable KEY=VALUE (repeatable).
    #[arg(short, long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Run as USER, UID, USER:GROUP or UID:GID (default: the container's user).
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory (default: the container's).
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// The VM's name.
    vm: String,
    /// The container's name.
    container: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct StopArgs {
    /// The VM's name.
    vm: String,
    /// A container to stop instead of the VM.
    container: Option<String>,
    /// Seconds to wait before forcing (a VM: 30; a container: its stop timeout).
    #[arg(short = 't', long = "time", value_name = "SECS")]
    time: Option<u32>,
}

#[derive(Debug, Args)]
struct StartArgs {
    /// The VM's name.
    vm: String,
    /// The container's name.
    container: String,
}

#[derive(Debug, Args)]
struct RestartArgs {
    /// The VM's name.
    vm: String,
    /// The container's name.
    container: String,
    /// Seconds to wait for it to stop before SIGKILL (default: its stop timeout).
    #[arg(short = 't', long = "time", value_name = "SECS")]
    time: Option<u32>,
}

#[derive(Debug, Args)]
struct KillArgs {
    /// The VM's name.
    vm: String,
    /// A container to signal instead of forcing the VM off.
    container: Option<String>,
    /// The signal for the container, by name or number.
    #[arg(short, long, value_name = "SIG", value_parser = format::parse_signal, requires = "container")]
    signal: Option<i32>,
}

#[derive(Debug, Args)]
struct ContainerArgs {
    /// The VM's name.
    vm: String,
    /// The container's name.
    container: String,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The VM's name.
    vm: String,
    /// One of its containers.
    container: Option<String>,
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// The VM's name.
    vm: String,
    /// One container (default: every running one).
    container: Option<String>,
    /// Print once instead of refreshing.
    #[arg(long)]
    no_stream: bool,
}

#[derive(Debug, Args)]
struct EventsArgs {
    /// The VM's name.
    vm: String,
    /// Output format (json: one object a line).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
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
    /// Ask the registries again for the images' tags and move the pins in
    /// hafen.lock (without it, pinned digests are used, from the local
    /// store when it has them, and nothing else touches the network).
    #[arg(long, visible_alias = "update")]
    pull: bool,
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
    /// Show the kernel's own messages (the default is quiet). (`-v` is
    /// docker's volume flag.)
    #[arg(long)]
    verbose: bool,
    /// Extra kernel command-line words.
    #[arg(long = "append", value_name = "WORD")]
    append: Vec<String>,
    /// Run in the background: return once the guest's control channel
    /// answers and print the VM's name.
    #[arg(short, long)]
    detach: bool,
    /// The VM's name for the other verbs (default: the image's name).
    #[arg(long)]
    name: Option<String>,
    /// No control channel (no `hafen ps/logs/exec/...` for this VM).
    #[arg(long, conflicts_with = "detach")]
    no_control: bool,
    /// Size of the data disk when this run creates it (bytes, or K/M/G;
    /// default: the manifest's data_size, else 1G). An existing disk keeps its size.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    data_size: Option<u64>,
    /// Back volume VOLUME with host directory HOSTDIR (virtio-9p) instead
    /// of the data disk; `:ro` makes it read-only. Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "HOSTDIR:VOLUME[:ro]", value_parser = parse_host_volume)]
    volumes: Vec<hafen_qemu::HostVolume>,
}

fn parse_host_volume(text: &str) -> Result<hafen_qemu::HostVolume, String> {
    let (rest, readonly) = match text.rsplit_once(':') {
        Some((rest, "ro")) => (rest, true),
        Some((rest, "rw")) => (rest, false),
        _ => (text, false),
    };
    let (dir, name) = rest
        .rsplit_once(':')
        .filter(|(d, n)| !d.is_empty() && !n.is_empty())
        .ok_or_else(|| format!("{text:?}: expected HOSTDIR:VOLUME or HOSTDIR:VOLUME:ro"))?;
    Ok(hafen_qemu::HostVolume {
        dir: dir.into(),
        name: name.to_owned(),
        readonly,
    })
}

fn parse_size(text: &str) -> Result<u64, String> {
    use hafen_image_build::manifest::{parse_bytes, MIN_DATA_SIZE};
    let size = parse_bytes(&toml::Value::String(text.to_owned()))?;
    if size < MIN_DATA_SIZE {
        return Err(format!(
            "{text:?} is too small for a data disk: at least {} MiB",
            MIN_DATA_SIZE >> 20
        ));
    }
    Ok(size)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build an image from a Dockerfile. Only --check works yet: it parses
    /// and validates the Dockerfile and the context (.dockerignore, COPY and
    /// ADD sources) and runs Docker's build checks, without building.
    Build(ImageBuildArgs),
    /// Make an image from a root filesystem directory or tar: into the local
    /// image store (named by --tag), or with -o into an OCI image layout.
    Import(ImportArgs),
    /// List the images in the local store.
    #[command(alias = "list")]
    Ls(ImageLsArgs),
    /// Remove image names from the local store (the content goes at prune).
    #[command(alias = "rmi")]
    Rm(ImageRmArgs),
    /// Give an image in the local store another name.
    Tag {
        /// The image: a name or an id.
        source: String,
        /// The new name, NAME[:TAG].
        target: String,
    },
    /// Show images in detail (JSON): digest, config, layers, platform, size.
    Inspect {
        /// Names or ids.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Show how an image was made, newest step first.
    History(ImageHistoryArgs),
    /// Write images from the local store to an archive.
    Save(ImageSaveArgs),
    /// Read images from an archive (docker-archive in either form, or
    /// oci-archive; gzip or zstd compressed too) into the local store.
    Load(ImageLoadArgs),
    /// Remove unnamed images and everything no named image uses.
    Prune,
    /// Download an image from a registry into the local store (only the
    /// blobs the store lacks). Prints the name pinned to its digest.
    Pull {
        /// NAME[:TAG] or NAME@DIGEST, by docker's rules (docker.io and
        /// library/ when no registry is named, latest when no tag).
        image: String,
        /// The platform to take from a multi-platform image: OS/ARCH[/VARIANT].
        #[arg(long, default_value = "linux/amd64")]
        platform: String,
        /// No progress display.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Upload an image from the local store to a registry (blobs the
    /// registry has are not sent again). Prints the pushed digest.
    Push {
        /// The image in the local store: a name or an id.
        image: String,
        /// Where to push it, NAME[:TAG] (default: the image's own name).
        destination: Option<String>,
        /// No progress display.
        #[arg(short, long)]
        quiet: bool,
    },
}

#[derive(Debug, Args)]
struct ImageBuildArgs {
    /// The build context: the directory COPY and ADD read from.
    context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "DOCKERFILE")]
    file: Option<PathBuf>,
    /// Name the result NAME[:TAG] in the local image store (repeatable).
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    tags: Vec<String>,
    /// A build argument KEY=VALUE (repeatable; KEY alone takes the value
    /// from the environment).
    #[arg(long = "build-arg", value_name = "K=V")]
    build_args: Vec<String>,
    /// Build this stage (and what it needs) instead of the last one.
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
    /// Use no cached step.
    #[arg(long)]
    no_cache: bool,
    /// Use no cached step for this stage (repeatable).
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    no_cache_filter: Vec<String>,
    /// The platform to build for (only linux/amd64: steps run in an x86_64 VM).
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    /// Also write the image to oci:DIR or oci-archive:FILE.
    #[arg(long, value_name = "oci:DIR|oci-archive:FILE")]
    output: Option<String>,
    /// Only parse and validate the Dockerfile and the context, and run the
    /// build checks; exit 1 when the build would fail.
    #[arg(long)]
    check: bool,
    /// Resolve every base image in its registry again instead of taking
    /// the local store's.
    #[arg(long)]
    pull: bool,
    /// RUN steps' network: none (only loopback, the default) or host (the
    /// build VM's, which reaches beyond this machine).
    #[arg(long, value_name = "none|host")]
    network: Option<String>,
}

#[derive(Debug, Args)]
struct ImageLsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Args)]
struct ImageRmArgs {
    /// Names or ids.
    #[arg(required = true)]
    images: Vec<String>,
    /// Remove every name of an image given by id, even across repositories.
    #[arg(short, long)]
    force: bool,
}

#[derive(Debug, Args)]
struct ImageHistoryArgs {
    /// A name or an id.
    image: String,
    /// Do not shorten ids and commands.
    #[arg(long)]
    no_trunc: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// The archive forms `hafen image save` writes.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ArchiveFormat {
    /// docker save's form, with RepoTags (docker load and skopeo read it).
    DockerArchive,
    /// A tar of an OCI image layout.
    OciArchive,
}

#[derive(Debug, Args)]
struct ImageSaveArgs {
    /// Names or ids.
    #[arg(required = true)]
    images: Vec<String>,
    /// The archive to write (it appears only once complete).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// The archive's form.
    #[arg(long, value_enum, default_value_t = ArchiveFormat::DockerArchive)]
    format: ArchiveFormat,
}

#[derive(Debug, Args)]
struct ImageLoadArgs {
    /// The archive to read (default: standard input).
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    input: PathBuf,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// A directory or a tar archive (optionally gzip-compressed) holding the root filesystem.
    rootfs: PathBuf,
    /// Write into this OCI image layout directory (created or added to)
    /// instead of the local image store.
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// With -o: the org.opencontainers.image.ref.name to record. Without:
    /// the image's name in the local store, NAME[:TAG].
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
    /// A path the image declares as a volume, as Dockerfile's VOLUME does
    /// (repeatable): each container of it gets an anonymous volume there.
    #[arg(long = "volume", value_name = "PATH")]
    volumes: Vec<String>,
}

/// How long `hafen stop VM` waits for the guest to shut down before forcing it.
const VM_STOP_TIME: u32 = 30;
/// `hafen kill VM CONTAINER`'s signal unless -s says otherwise (docker's).
const SIGKILL: i32 = 9;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Control(verb) => return control(verb),
        other => run(other),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            print_error_chain(err.as_ref());
            ExitCode::from(2)
        }
    }
}

/// Runs a verb against a running VM: its exit code, 1 when it fails.
fn control(verb: Control) -> ExitCode {
    let result = match verb {
        Control::Ls(a) => vm::ls(a.format == Format::Json),
        Control::Ps(a) => containers::ps(&containers::PsOptions {
            vm: a.vm,
            all: a.all,
            json: a.format == Format::Json,
        }),
        Control::Port(a) => containers::port(&a.vm, a.container.as_deref()),
        Control::Logs(a) => logs::logs(&logs::LogsOptions {
            vm: a.vm,
            container: a.container,
            follow: a.follow,
            tail: a.tail,
            since: a.since,
            timestamps: a.timestamps,
        }),
        Control::Exec(a) => exec::exec(&exec::ExecOptions {
            vm: a.vm,
            container: a.container,
            args: a.command,
            env: a.env,
            user: a.user,
            cwd: a.workdir,
            interactive: a.interactive,
            tty: a.tty,
        }),
        Control::Stop(a) => match a.container {
            Some(c) => containers::act(&a.vm, &c, containers::Action::Stop(a.time)),
            None => vm::stop(
                &a.vm,
                Duration::from_secs(a.time.unwrap_or(VM_STOP_TIME).into()),
            ),
        },
        Control::Start(a) => containers::act(&a.vm, &a.container, containers::Action::Start),
        Control::Restart(a) => {
            containers::act(&a.vm, &a.container, containers::Action::Restart(a.time))
        }
        Control::Kill(a) => match a.container {
            Some(c) => {
                let signal = a.signal.unwrap_or(SIGKILL);
                containers::act(&a.vm, &c, containers::Action::Kill(signal))
            }
            None => vm::kill(&a.vm),
        },
        Control::Wait(a) => containers::wait(&a.vm, &a.container),
        Control::Inspect(a) => match a.container {
            Some(c) => containers::inspect(&a.vm, &c),
            None => vm::inspect(&a.vm),
        },
        Control::Top(a) => containers::top(&a.vm, &a.container),
        Control::Stats(a) => stats::stats(&stats::StatsOptions {
            vm: a.vm,
            container: a.container,
            stream: !a.no_stream,
        }),
        Control::Events(a) => events::events(&a.vm, a.format == Format::Json),
        Control::Volume(VolumeCommand::Ls { vm }) => volumes::ls(&vm),
        Control::Volume(VolumeCommand::Inspect { vm, name }) => volumes::inspect(&vm, &name),
        Control::Volume(VolumeCommand::Export { vm, name, output }) => {
            volumes::export(&vm, &name, output.as_deref())
        }
        Control::Volume(VolumeCommand::Import { vm, name, input }) => {
            volumes::import(&vm, &name, input.as_deref())
        }
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
        // `hafen logs ... | head`: the reader has what it wanted.
        Err(err) if err.is_broken_pipe() => ExitCode::SUCCESS,
        Err(err) => {
            print_error_chain(&err);
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match command {
        Command::Build(args) => {
            let summary = hafen_image_build::build(&hafen_image_build::BuildOptions {
                manifest: args.manifest,
                out: args.out,
                kernel: args.kernel,
                init: args.init,
                pull: args.pull,
            })?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let opts = hafen_qemu::RunOptions {
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
                name: args.name,
                control: !args.no_control,
                data_size: args.data_size,
                host_volumes: args.volumes,
                stop_with_caller: false,
            };
            if args.detach {
                println!("{}", hafen_qemu::run_detached(&opts)?);
                return Ok(ExitCode::SUCCESS);
            }
            let outcome = hafen_qemu::run(&opts)?;
            eprintln!("hafen: {outcome}");
            Ok(ExitCode::from(outcome.exit_code().clamp(0, 255) as u8))
        }
        Command::Image(ImageCommand::Import(args)) => {
            let opts = hafen_image_build::ImportOptions {
                rootfs: args.rootfs,
                layout: args.out.clone().unwrap_or_default(),
                tag: args.tag.clone(),
                entrypoint: (!args.entrypoint.is_empty()).then_some(args.entrypoint),
                cmd: (!args.cmd.is_empty()).then_some(args.cmd),
                env: args.env,
                workdir: args.workdir,
                volumes: args.volumes,
            };
            let summary = match args.out {
                Some(_) => hafen_image_build::import(&opts)?,
                None => {
                    let name = args.tag.as_deref().map(str::parse).transpose()?;
                    let store = hafen_image_build::store::Store::open_default()?;
                    hafen_image_build::import_into_store(&opts, &store, name.as_ref())?
                }
            };
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(ImageCommand::Build(args)) => image_build(args),
        Command::Image(verb) => image_verb(verb),
        Command::Login(args) => {
            let options = hafen_registry::ClientOptions::from_env();
            let registry = hafen_registry::login::login(
                &options,
                &args.registry,
                args.username,
                args.password_stdin,
            )?;
            println!("Login succeeded for {registry}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Logout(args) => {
            let options = hafen_registry::ClientOptions::from_env();
            let logout = hafen_registry::login::logout(&options, &args.registry)?;
            if logout.removed {
                println!("Removed the credentials for {}", logout.registry);
            } else {
                println!("Not logged in to {} with hafen", logout.registry);
            }
            for path in logout.still_in {
                eprintln!(
                    "hafen: {} still holds credentials for {} (hafen reads them too)",
                    path.display(),
                    logout.registry
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Control(verb) => Ok(control(verb)),
    }
}

/// `hafen image build`: with --check, the report (exit 1 when the build
/// would fail); without, the build, which needs the VM executor yet.
fn image_build(args: ImageBuildArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use hafen_image_build::dockerfile::cli;
    let request = cli::BuildRequest {
        context: args.context,
        dockerfile: args.file,
        tags: args.tags,
        build_args: args.build_args,
        target: args.target,
        no_cache: args.no_cache,
        no_cache_filter: args.no_cache_filter,
        platform: args.platform,
        output: args.output,
        check: args.check,
        pull: args.pull,
        network: args.network,
        kernel: None,
        init: None,
    };
    // Base images are looked up in an existing store only; a check never
    // creates one.
    let store = hafen_image_build::store::default_root()
        .ok()
        .filter(|root| root.join("index.json").is_file())
        .and_then(|root| hafen_image_build::store::Store::open(&root).ok());
    if request.check {
        let outcome = cli::run_check(&request, store.as_ref());
        if outcome.report.ok() {
            print!("{}", outcome.rendered);
            return Ok(ExitCode::SUCCESS);
        }
        eprint!("{}", outcome.rendered);
        return Ok(ExitCode::FAILURE);
    }
    let store = match store {
        Some(store) => store,
        None => hafen_image_build::store::Store::open_default()?,
    };
    let built = cli::build(&request, &store)?;
    eprintln!(
        "built {} ({} steps cached, {} executed{})",
        built.digest,
        built.cached,
        built.executed,
        if built.booted_vm {
            ""
        } else {
            "; no VM booted"
        }
    );
    println!("{}", built.digest);
    Ok(ExitCode::SUCCESS)
}

/// Runs a verb over the local image store.
fn image_verb(verb: ImageCommand) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use hafen_image_build::archive::SaveFormat;
    use hafen_image_build::images_cli as cli;
    let mut store = hafen_image_build::store::Store::open_default()?;
    let result = match verb {
        ImageCommand::Import(_) => Err(cli::CliError::Invalid("import is not a store verb".into())),
        ImageCommand::Build(_) => Err(cli::CliError::Invalid("build is not a store verb".into())),
        ImageCommand::Ls(a) => cli::ls(&store, a.format == Format::Json),
        ImageCommand::Rm(a) => cli::rm(&store, &a.images, a.force),
        ImageCommand::Tag { source, target } => cli::tag(&store, &source, &target),
        ImageCommand::Inspect { images } => cli::inspect(&store, &images),
        ImageCommand::History(a) => {
            cli::history(&store, &a.image, a.no_trunc, a.format == Format::Json)
        }
        ImageCommand::Save(a) => {
            let format = match a.format {
                ArchiveFormat::DockerArchive => SaveFormat::DockerArchive,
                ArchiveFormat::OciArchive => SaveFormat::OciArchive,
            };
            cli::save(&store, &a.images, &a.output, format)
        }
        ImageCommand::Load(a) => cli::load(&store, &a.input),
        ImageCommand::Prune => cli::prune(&mut store),
        ImageCommand::Pull {
            image,
            platform,
            quiet,
        } => return transfer(&store, Transfer::Pull { image, platform }, quiet),
        ImageCommand::Push {
            image,
            destination,
            quiet,
        } => return transfer(&store, Transfer::Push { image, destination }, quiet),
    };
    match result {
        Ok(code) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))),
        Err(err) if err.is_broken_pipe() => Ok(ExitCode::SUCCESS),
        Err(err) => Err(err.into()),
    }
}

/// A pull or a push.
enum Transfer {
    Pull {
        image: String,
        platform: String,
    },
    Push {
        image: String,
        destination: Option<String>,
    },
}

/// `hafen image pull` and `push`: the registry client over the store.
fn transfer(
    store: &hafen_image_build::store::Store,
    what: Transfer,
    quiet: bool,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use hafen_image_build::pull;
    use hafen_registry::{progress, Client, ClientOptions, NoProgress, Progress, Reference};
    let client = Client::new(ClientOptions::from_env());
    let shown: Box<dyn Progress> = if quiet {
        Box::new(NoProgress)
    } else {
        progress::stderr_progress()
    };
    match what {
        Transfer::Pull { image, platform } => {
            let reference: Reference = image.parse()?;
            let platform: hafen_registry::Platform = platform.parse()?;
            let pulled = pull::pull(&client, store, &reference, &platform, &*shown)?;
            if !quiet {
                eprintln!(
                    "hafen: {}: {} blob(s) fetched, {} already in the store",
                    reference.familiar(),
                    pulled.fetched,
                    pulled.cached
                );
            }
            println!("{}", reference.with_digest(&pulled.digest));
        }
        Transfer::Push { image, destination } => {
            let found = hafen_image_build::images_cli::find(store, &image)?;
            let source: Option<Reference> = found.names.first().and_then(|n| n.parse().ok());
            let target: Reference = match (destination, &source) {
                (Some(d), _) => d.parse()?,
                (None, Some(s)) => s.clone(),
                (None, None) => {
                    return Err(format!(
                        "image {image} has no name to push to: give one (hafen image push {image} NAME[:TAG])"
                    )
                    .into())
                }
            };
            let digest = pull::push(
                &client,
                store,
                &found.descriptor,
                source.as_ref(),
                &target,
                &*shown,
            )?;
            println!("{}", target.with_digest(&digest));
        }
    }
    Ok(ExitCode::SUCCESS)
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
