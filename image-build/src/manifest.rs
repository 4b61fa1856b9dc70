//! `hafen.toml`: what an image holds. Parsing rejects unknown keys and
//! checks every value, naming the file and the field in each error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hafen_proto::annotations::{self, Phase};
use hafen_proto::net::{
    self, ContainerNet, NetworkConfig, NetworkMode, PortMapping, Protocol, Subnet,
};
use hafen_proto::supervision::{self, Condition, Dependency, Healthcheck, RestartPolicy};
use hafen_registry::Reference;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {}", path.display())]
    Read {
        /// The manifest.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("{}: {}", path.display(), message)]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// The TOML parser's message (with line, column and key).
        message: String,
    },
    /// A value is invalid.
    #[error("{}: {field}: {message}", path.display())]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// The field, e.g. `container[1].stop_signal`.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    hostname: Option<String>,
    main: Option<String>,
    data_size: Option<toml::Value>,
    network: Option<RawNetwork>,
    #[serde(default, rename = "volume")]
    volumes: Vec<RawVolume>,
    #[serde(default, rename = "container")]
    containers: Vec<RawContainer>,
}

/// The top-level `[network]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default)]
    outbound: bool,
    subnet: Option<String>,
    mtu: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    name: String,
    image: Option<String>,
    build: Option<toml::Value>,
    command: Option<Vec<String>>,
    #[serde(default)]
    env: Vec<String>,
    phase: Option<String>,
    stop_signal: Option<String>,
    stop_timeout: Option<u32>,
    log_size: Option<toml::Value>,
    #[serde(default)]
    privileged: bool,
    #[serde(default)]
    cap_add: Vec<String>,
    #[serde(default)]
    cap_drop: Vec<String>,
    #[serde(default)]
    read_only: bool,
    user: Option<String>,
    memory: Option<toml::Value>,
    cpus: Option<toml::Value>,
    pids: Option<i64>,
    #[serde(default)]
    userns: bool,
    restart: Option<toml::Value>,
    depends_on: Option<toml::Value>,
    healthcheck: Option<toml::Value>,
    required: Option<toml::Value>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    tmpfs: Vec<String>,
    #[serde(default)]
    volumes_from: Vec<String>,
    network: Option<String>,
    #[serde(default)]
    ports: Vec<String>,
    hostname: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
}

/// `healthcheck = { ... }` as written; values are checked by [`parse_healthcheck`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthcheck {
    test: Option<toml::Value>,
    interval: Option<toml::Value>,
    timeout: Option<toml::Value>,
    start_period: Option<toml::Value>,
    start_interval: Option<toml::Value>,
    retries: Option<toml::Value>,
}

/// `build = { ... }` as written; values are checked by [`parse_build`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    context: Option<String>,
    dockerfile: Option<String>,
    args: Option<toml::Value>,
    target: Option<String>,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Where it was read from.
    pub path: PathBuf,
    /// The image's name.
    pub name: String,
    /// The guest's hostname.
    pub hostname: String,
    /// The container whose end shuts the machine down and whose exit
    /// status `hafen run` returns (a declared container's name).
    pub main: Option<String>,
    /// Containers in declared order.
    pub containers: Vec<Container>,
    /// The `[[volume]]` names, in declared order.
    pub volumes: Vec<String>,
    /// Size in bytes of the data disk (`data_size`); `None`: `hafen run`'s default.
    pub data_size: Option<u64>,
    /// The `[network]` table and each container's `network`, `ports`,
    /// `hostname` and `aliases`, with every bridge container's address
    /// assigned: what PID 1 reads from [`net::NETWORK_CONFIG`].
    pub network: NetworkConfig,
}

/// One `[[container]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Unique name.
    pub name: String,
    /// Where its image comes from.
    pub image: ImageRef,
    /// Replaces the image's entrypoint and cmd.
    pub command: Option<Vec<String>>,
    /// Added to the image's environment.
    pub env: Vec<String>,
    /// When it runs.
    pub phase: Phase,
    /// Stop signal as written (validated).
    pub stop_signal: Option<String>,
    /// Seconds before SIGKILL.
    pub stop_timeout: Option<u32>,
    /// Bytes of output the guest keeps for it; `None`: the guest's default.
    pub log_size: Option<u32>,
    /// Named by the manifest's `main`.
    pub main: bool,
    /// Security and resource settings.
    pub security: Security,
    /// What happens when it ends (default `no`).
    pub restart: RestartPolicy,
    /// What it waits for before it starts, as declared.
    pub depends_on: Vec<Dependency>,
    /// The manifest's health check, merged over the image's one when the
    /// bundle is made (see [`crate::bundle::healthcheck`]); `test = ["NONE"]`
    /// disables the image's.
    pub healthcheck: Option<Healthcheck>,
    /// A `once` container whose failure stops the boot.
    pub required: bool,
    /// Its own mounts: `volumes`, then `tmpfs`, in declared order.
    pub mounts: Vec<VolumeMount>,
    /// The containers whose volumes it mounts too (`volumes_from`).
    pub volumes_from: Vec<VolumesFrom>,
}

/// Something mounted into a container at `destination` that is not part of
/// its image: a volume on the data disk or a tmpfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// Absolute path inside the container, normalised (no `.`, `//` or trailing `/`).
    pub destination: String,
    /// What is mounted there.
    pub source: MountSource,
}

/// What a [`VolumeMount`] mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// The data-disk volume `name` (declared, or anonymous from an image's `Volumes`).
    Volume {
        /// The volume's name.
        name: String,
        /// Mounted read-only.
        read_only: bool,
    },
    /// A fresh tmpfs with these options (checked, as written).
    Tmpfs {
        /// `size=`, `mode=`, flags such as `noexec`.
        options: Vec<String>,
    },
}

/// One `volumes_from` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumesFrom {
    /// The container whose volumes are mounted.
    pub container: String,
    /// `Some(true)` for `:ro`, `Some(false)` for `:rw`; `None` keeps each volume's own mode.
    pub read_only: Option<bool>,
}

/// How a container is confined.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Security {
    /// All capabilities, no seccomp filter, no masked paths.
    pub privileged: bool,
    /// Capabilities added to the default set (`CAP_NET_ADMIN`, or `ALL`).
    pub cap_add: Vec<String>,
    /// Capabilities removed from the default set (or `ALL`).
    pub cap_drop: Vec<String>,
    /// Read-only root filesystem.
    pub read_only: bool,
    /// `uid[:gid]` or a name from the image; replaces the image's user.
    pub user: Option<String>,
    /// memory.max in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU quota in millicpus (1000 = one CPU).
    pub millicpus: Option<u64>,
    /// pids.max.
    pub pids: Option<u32>,
    /// Run in a user namespace, container root mapped to an unprivileged host range.
    pub userns: bool,
}

/// The smallest data disk a manifest may ask for.
pub const MIN_DATA_SIZE: u64 = 16 << 20;

/// Parses `268435456`, `"256M"`, `"1G"`, `"512k"` (binary units).
pub fn parse_bytes(value: &toml::Value) -> Result<u64, String> {
    let text = match value {
        toml::Value::Integer(n) if *n > 0 => return Ok(*n as u64),
        toml::Value::String(s) => s.trim().to_owned(),
        other => {
            return Err(format!(
                "{other} is not a size: use bytes or a string such as \"256M\""
            ))
        }
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size: use bytes or a string such as \"256M\""))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use K, M or G)")),
    };
    match n.checked_shl(shift).filter(|v| *v > 0 && v >> shift == n) {
        Some(v) => Ok(v),
        None => Err(format!("{text:?} is out of range")),
    }
}

/// Parses a container's `log_size` (a size as [`parse_bytes`] reads it) and
/// checks it lies within what the guest accepts.
pub fn parse_log_size(value: &toml::Value, container: &str) -> Result<u32, String> {
    let bytes = parse_bytes(value)?;
    let range = u64::from(annotations::MIN_LOG_SIZE)..=u64::from(annotations::MAX_LOG_SIZE);
    if !range.contains(&bytes) {
        return Err(format!(
            "{bytes} bytes for container {container:?} is out of range ({} to {})",
            human_size(*range.start()),
            human_size(*range.end())
        ));
    }
    u32::try_from(bytes).map_err(|_| format!("{bytes} bytes is out of range"))
}

/// `4096` as `"4K"`, `1048576` as `"1M"`: a size in the unit a manifest would use.
fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

/// Parses `1`, `0.5` or `"1.5"` CPUs into millicpus.
pub fn parse_cpus(value: &toml::Value) -> Result<u64, String> {
    let cpus = match value {
        toml::Value::Integer(n) => *n as f64,
        toml::Value::Float(f) => *f,
        toml::Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("{s:?} is not a number of CPUs"))?,
        other => return Err(format!("{other} is not a number of CPUs")),
    };
    if !(0.01..=1024.0).contains(&cpus) {
        return Err(format!("{cpus} CPUs is out of range (0.01 to 1024)"));
    }
    Ok((cpus * 1000.0).round() as u64)
}

/// What a duration is expected to look like.
const DURATION_EXPECTED: &str =
    "a duration such as \"500ms\", \"5s\", \"1m30s\" or \"2h\" (units ms, s, m, h)";

/// Parses a duration such as `"500ms"`, `"5s"`, `"1m30s"` or `"2h"`
/// (whole numbers of ms, s, m and h, in any combination) into nanoseconds.
/// Zero is refused: every duration a manifest gives is a positive time.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("{text:?} {why}: expected {DURATION_EXPECTED}");
    if text.is_empty() {
        return Err(bad("is empty"));
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad("is not a duration"));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let ns_per_unit: u64 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" if after.is_empty() => return Err(bad("has a number without a unit")),
            "" => return Err(bad("is not a duration (whole numbers with units only)")),
            _ => return Err(bad(&format!("has the unknown unit {unit:?}"))),
        };
        let part = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(ns_per_unit));
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| bad("is too long"))?;
        rest = after;
    }
    if total == 0 {
        return Err(bad("is zero"));
    }
    Ok(total)
}

/// Parses a container's `restart`.
pub fn parse_restart(value: &toml::Value) -> Result<RestartPolicy, String> {
    match value {
        toml::Value::String(s) => s.parse(),
        other => Err(format!(
            "{other} is not a restart policy: expected {}",
            supervision::RESTART_EXPECTED
        )),
    }
}

/// Parses a container's `depends_on`: a table `{ db = "healthy" }` (compose's
/// long form `{ db = { condition = "service_healthy" } }` too) or an array
/// of names, each meaning `started`.
pub fn parse_depends_on(value: &toml::Value) -> Result<Vec<Dependency>, String> {
    const EXPECTED: &str = "expected a table such as { db = \"healthy\", migrate = \"completed\" } \
         (conditions \"started\", \"healthy\", \"completed\") or an array of names such as [\"db\"]";
    let mut deps: Vec<Dependency> = Vec::new();
    let mut add = |name: &str, condition: Condition| -> Result<(), String> {
        if deps.iter().any(|d| d.name == name) {
            return Err(format!("{name:?} is listed twice"));
        }
        deps.push(Dependency {
            name: name.to_owned(),
            condition,
        });
        Ok(())
    };
    match value {
        toml::Value::Array(names) => {
            for name in names {
                match name {
                    toml::Value::String(name) => add(name, Condition::Started)?,
                    other => return Err(format!("{other} is not a container name: {EXPECTED}")),
                }
            }
        }
        toml::Value::Table(table) => {
            for (name, condition) in table {
                let condition = match condition {
                    toml::Value::String(c) => c.parse().map_err(|e| format!("{name}: {e}"))?,
                    toml::Value::Table(long) => match (long.get("condition"), long.len()) {
                        (Some(toml::Value::String(c)), 1) => {
                            c.parse().map_err(|e| format!("{name}: {e}"))?
                        }
                        _ => {
                            return Err(format!(
                                "{name}: the long form takes only condition = \"...\"; {EXPECTED}"
                            ))
                        }
                    },
                    other => return Err(format!("{name}: {other} is not a condition; {EXPECTED}")),
                };
                add(name, condition)?;
            }
        }
        other => return Err(format!("{other} is not a list of dependencies: {EXPECTED}")),
    }
    Ok(deps)
}

/// Parses a container's `healthcheck` table (docker's form: durations
/// become nanoseconds). `test` may be left out to keep the image's; a
/// string `test` is a shell command, as in compose.
pub fn parse_healthcheck(value: &toml::Value) -> Result<Healthcheck, String> {
    if !value.is_table() {
        return Err(format!(
            "{value} is not a table: expected {{ test = [\"CMD\", \"program\", \"arg\"], \
             interval = \"30s\", timeout = \"30s\", retries = 3, start_period = \"10s\" }}"
        ));
    }
    let raw: RawHealthcheck = value
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_owned())?;
    let test_given = raw.test.is_some();
    let test = match raw.test {
        None => Vec::new(),
        Some(toml::Value::String(shell)) => vec!["CMD-SHELL".to_owned(), shell],
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                toml::Value::String(s) => Ok(s),
                other => Err(format!("test: {other} is not a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "test: {other} is not [\"CMD\", ...], [\"CMD-SHELL\", \"...\"] or [\"NONE\"]"
            ))
        }
    };
    let check = Healthcheck {
        test,
        ..Healthcheck::default()
    };
    if test_given {
        check.command().map_err(|e| format!("test: {e}"))?;
    }
    let duration = |key: &str, value: Option<toml::Value>| -> Result<u64, String> {
        match value {
            None => Ok(0),
            Some(toml::Value::String(s)) => parse_duration(&s).map_err(|e| format!("{key}: {e}")),
            Some(other) => Err(format!(
                "{key}: {other} is not a duration: expected {DURATION_EXPECTED}"
            )),
        }
    };
    let retries = match raw.retries {
        None => 0,
        Some(toml::Value::Integer(n)) if n >= 1 => u32::try_from(n)
            .map_err(|_| format!("retries: {n} is out of range (1 to {})", u32::MAX))?,
        Some(other) => {
            return Err(format!(
                "retries: {other} is not a positive whole number of failures"
            ))
        }
    };
    Ok(Healthcheck {
        interval_ns: duration("interval", raw.interval)?,
        timeout_ns: duration("timeout", raw.timeout)?,
        start_period_ns: duration("start_period", raw.start_period)?,
        start_interval_ns: duration("start_interval", raw.start_interval)?,
        retries,
        ..check
    })
}

/// Where a container's image comes from, as the manifest's `image =`
/// names it; paths are resolved against the manifest's folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// The reference as written.
    pub text: String,
    /// What it names.
    pub source: ImageSource,
}

/// The transports an image reference can name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageSource {
    /// `oci:PATH[:TAG]`: an OCI image layout directory.
    Oci {
        /// The layout directory.
        layout: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick, if given.
        tag: Option<String>,
    },
    /// `oci-archive:FILE[:TAG]`: a tar of an OCI image layout.
    OciArchive {
        /// The archive.
        file: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick, if given.
        tag: Option<String>,
    },
    /// `docker-archive:FILE[:NAME:TAG]` or `docker-archive:FILE:@N`: what
    /// `docker save` writes.
    DockerArchive {
        /// The archive.
        file: PathBuf,
        /// Which of its images, if it holds more than one.
        pick: Option<ArchivePick>,
    },
    /// A name without a transport (`busybox:1.36`, `ghcr.io/org/app:2`,
    /// `localhost:5000/app@sha256:…`): looked up in the local image store.
    Registry(Reference),
    /// `build = ...`: an image `hafen build` builds from a Dockerfile into
    /// the local image store first.
    Build(BuildSpec),
}

/// A container's `build`: what to give the Dockerfile builder (compose's
/// `build` keys), and the name its image gets in the local store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildSpec {
    /// The context directory (`context`, or the string form), resolved
    /// against the manifest's directory.
    pub context: PathBuf,
    /// The Dockerfile: `dockerfile` resolved against the context (as in
    /// compose), by default `CONTEXT/Dockerfile`.
    pub dockerfile: PathBuf,
    /// `args`: build arguments, as `--build-arg NAME=VALUE`.
    pub args: BTreeMap<String, String>,
    /// `target`: the stage to build instead of the last one.
    pub target: Option<String>,
    /// The image's name in the local store, see [`build_tag`]. Containers
    /// with the same build share one build, named after the first of them.
    pub tag: Reference,
}

impl BuildSpec {
    /// Whether two specs build the same image (their names aside).
    pub fn same_build(&self, other: &BuildSpec) -> bool {
        (&self.context, &self.dockerfile, &self.args, &self.target)
            == (
                &other.context,
                &other.dockerfile,
                &other.args,
                &other.target,
            )
    }
}

/// Where the local store's names for built images live: `localhost` is
/// never a registry `hafen build` pulls from by default, and `hafen-build`
/// says what made them.
pub const BUILD_REPOSITORY_PREFIX: &str = "localhost/hafen-build";

/// The name `hafen build` gives the image it builds for `container` of
/// the manifest `manifest`: `localhost/hafen-build/MANIFEST:CONTAINER`.
/// Both names are `[a-z0-9-]`; a repository component cannot end with `-`
/// (a tag can), so those are trimmed from the manifest's name.
pub fn build_tag(manifest: &str, container: &str) -> Result<Reference, String> {
    let repository = manifest.trim_end_matches('-');
    let text = format!("{BUILD_REPOSITORY_PREFIX}/{repository}:{container}");
    text.parse()
        .map_err(|e| format!("the built image's name {text:?} is not a reference: {e}"))
}

/// What `build =` accepts, for error messages.
pub const BUILD_FORMS: &str =
    "\"path/to/context\" or { context = \"path\", dockerfile = \"Dockerfile\", \
                               args = { NAME = \"value\" }, target = \"stage\" }";

/// Checks a `context` or `dockerfile` path: local and not empty.
fn build_path<'a>(key: &str, text: &'a str) -> Result<&'a str, String> {
    if text.is_empty() {
        return Err(format!("{key} is empty: give a path, such as \".\""));
    }
    if text.contains("://") || text.starts_with("git@") {
        return Err(format!(
            "{key} {text:?} is a URL: hafen build reads a local directory; clone or download it and give its path"
        ));
    }
    Ok(text)
}

/// Parses a container's `build`: a context directory as a string, or a
/// table with `context` (default `.`), `dockerfile` (relative to the
/// context), `args` and `target`. Relative paths are resolved against
/// `base`, the manifest's directory; `tag` names the result.
pub fn parse_build(value: &toml::Value, base: &Path, tag: Reference) -> Result<BuildSpec, String> {
    let raw = match value {
        toml::Value::String(context) => RawBuild {
            context: Some(context.clone()),
            dockerfile: None,
            args: None,
            target: None,
        },
        toml::Value::Table(_) => value
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| format!("{}; expected {BUILD_FORMS}", e.message()))?,
        other => return Err(format!("{other} is not a build: expected {BUILD_FORMS}")),
    };
    // Collecting the components drops inner `.`s (`/m/./app` is `/m/app`),
    // so errors show the paths plainly.
    let context: PathBuf = base
        .join(build_path(
            "context",
            raw.context.as_deref().unwrap_or("."),
        )?)
        .components()
        .collect();
    let dockerfile = match &raw.dockerfile {
        Some(file) => context.join(build_path("dockerfile", file)?),
        None => context.join("Dockerfile"),
    }
    .components()
    .collect();
    let mut args = BTreeMap::new();
    match raw.args {
        None => {}
        Some(toml::Value::Table(table)) => {
            for (name, value) in table {
                if name.is_empty() || name.contains('=') || name.contains(char::is_whitespace) {
                    return Err(format!(
                        "args: {name:?} is not a build argument's name (no '=' or blanks)"
                    ));
                }
                match value {
                    toml::Value::String(v) => {
                        args.insert(name, v);
                    }
                    other => {
                        return Err(format!(
                            "args: {name} = {other} is not a string: write {name} = \"{other}\""
                        ))
                    }
                }
            }
        }
        Some(other) => {
            return Err(format!(
                "args: {other} is not a table: expected args = {{ NAME = \"value\" }}"
            ))
        }
    }
    if let Some(target) = &raw.target {
        if target.is_empty() || target.contains(char::is_whitespace) {
            return Err(format!("target: {target:?} is not a stage name"));
        }
    }
    Ok(BuildSpec {
        context,
        dockerfile,
        args,
        target: raw.target,
        tag,
    })
}

/// Which image of a docker archive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArchivePick {
    /// The one with this name among its `RepoTags`.
    Name(Reference),
    /// The Nth (from 0) of its manifest.json.
    Index(usize),
}

/// What `image =` accepts, for error messages.
pub const IMAGE_FORMS: &str = "NAME[:TAG], NAME@sha256:DIGEST, oci:PATH[:TAG], \
                               oci-archive:FILE[:TAG] or docker-archive:FILE[:NAME:TAG]";

/// Splits `PATH[:TAG]`: the last `:` starts a tag only when no `/` follows it.
fn path_and_tag<'a>(text: &str, rest: &'a str) -> Result<(&'a str, Option<&'a str>), String> {
    let (path, tag) = match rest.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !path.is_empty() => (path, Some(tag)),
        _ => (rest, None),
    };
    if path.is_empty() {
        return Err(format!("{text:?} names no file or directory"));
    }
    if tag.is_some_and(str::is_empty) {
        return Err(format!("{text:?} has an empty tag"));
    }
    Ok((path, tag))
}

/// Parses an image reference in any of the [`IMAGE_FORMS`]; the
/// transports come first, so `oci:x` is a layout, not docker.io/library/oci:x.
pub fn parse_image_ref(text: &str, base: &Path) -> Result<ImageRef, String> {
    let source = if let Some(rest) = text.strip_prefix("oci:") {
        let (path, tag) = path_and_tag(text, rest)?;
        ImageSource::Oci {
            layout: base.join(path),
            tag: tag.map(str::to_owned),
        }
    } else if let Some(rest) = text.strip_prefix("oci-archive:") {
        let (path, tag) = path_and_tag(text, rest)?;
        ImageSource::OciArchive {
            file: base.join(path),
            tag: tag.map(str::to_owned),
        }
    } else if let Some(rest) = text.strip_prefix("docker-archive:") {
        // As skopeo: the first ':' ends the file name.
        let (path, pick) = match rest.split_once(':') {
            Some((path, pick)) => (path, Some(pick)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(format!("{text:?} names no archive file"));
        }
        let pick = match pick {
            None => None,
            Some(index) if index.starts_with('@') => {
                Some(ArchivePick::Index(index[1..].parse().map_err(|_| {
                    format!("{text:?}: {index:?} is not @ and an image's position")
                })?))
            }
            Some(name) => {
                let name: Reference = name.parse().map_err(|e| format!("{text:?}: {e}"))?;
                if name.digest.is_some() {
                    return Err(format!(
                        "{text:?}: a docker archive names its images NAME:TAG, not by digest"
                    ));
                }
                Some(ArchivePick::Name(name))
            }
        };
        ImageSource::DockerArchive {
            file: base.join(path),
            pick,
        }
    } else {
        let name = text.strip_prefix("docker://").unwrap_or(text);
        let reference: Reference = name.parse().map_err(|e: hafen_registry::ReferenceError| {
            format!(
                "{text:?} is not an image reference ({}); use {IMAGE_FORMS}",
                e.kind
            )
        })?;
        ImageSource::Registry(reference)
    };
    Ok(ImageRef {
        text: text.to_owned(),
        source,
    })
}

/// Where the runtime mounts the kernel's file systems itself: a volume or
/// tmpfs may not go at or under these (`/dev/shm` excepted: one there
/// replaces the default shm tmpfs, as in docker).
const RESERVED_DESTINATIONS: &[&str] = &["/proc", "/sys", "/dev"];

/// Checks a mount destination and normalises it (`//`, `.` and a trailing
/// `/` removed), so two spellings of one path are seen as the same.
pub fn parse_destination(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "{path:?} is not an absolute path: write it from the container's root, such as \"/data\""
        ));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "{path:?} contains \"..\": write the path without it"
                ))
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(format!(
            "{path:?} is the container's root: mount below it, such as \"/data\""
        ));
    }
    let normal = format!("/{}", parts.join("/"));
    if normal != "/dev/shm" {
        for reserved in RESERVED_DESTINATIONS {
            if normal == *reserved || normal.starts_with(&format!("{reserved}/")) {
                return Err(format!(
                    "{path:?} is under {reserved}, which the runtime mounts itself: pick another path"
                ));
            }
        }
    }
    Ok(normal)
}

pub use hafen_proto::layout::valid_volume_name;

/// What a `volumes` item looks like.
const VOLUME_EXPECTED: &str = "expected \"NAME:/path\", \"NAME:/path:ro\" or \"NAME:/path:rw\"";

/// Parses one `volumes` item, `NAME:/path[:ro|:rw]`; `declared` are the
/// `[[volume]]` names it may use.
pub fn parse_volume(text: &str, declared: &[String]) -> Result<VolumeMount, String> {
    let Some((name, rest)) = text.split_once(':') else {
        return Err(format!("{text:?} has no path: {VOLUME_EXPECTED}"));
    };
    if name.starts_with('/') || name.starts_with('.') {
        return Err(format!(
            "{text:?}: {name:?} is a host path; a manifest mounts named volumes: declare \
             [[volume]] name = \"data\" and write \"data:/path\" (hafen run -v HOSTDIR:data \
             backs it with a host directory)"
        ));
    }
    let (path, mode) = match rest.split_once(':') {
        Some((path, mode)) => (path, Some(mode)),
        None => (rest, None),
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            return Err(format!(
                "{text:?}: unknown mode {other:?} (only ro or rw): {VOLUME_EXPECTED}"
            ))
        }
    };
    if !declared.iter().any(|d| d == name) {
        let list: Vec<String> = declared.iter().map(|d| format!("{d:?}")).collect();
        return Err(format!(
            "volume {name:?} is not declared: add [[volume]] name = {name:?} (declared: {})",
            if list.is_empty() {
                "none".to_owned()
            } else {
                list.join(", ")
            }
        ));
    }
    let destination = parse_destination(path).map_err(|e| format!("volume {name:?}: {e}"))?;
    Ok(VolumeMount {
        destination,
        source: MountSource::Volume {
            name: name.to_owned(),
            read_only,
        },
    })
}

/// What tmpfs options a manifest may give.
const TMPFS_EXPECTED: &str = "expected \"/path\" or \"/path:OPTIONS\" with comma-separated \
     options size=N[k|m|g], mode=OCTAL, uid=N, gid=N, nr_inodes=N[k|m|g], noexec, exec, \
     nosuid, suid, nodev, dev, ro, rw";

/// Docker's options for `--tmpfs`, which a manifest's own replace.
const TMPFS_DEFAULTS: &[&str] = &["nosuid", "nodev", "noexec", "mode=1777"];

/// The option a tmpfs option replaces or contradicts: its key, or the
/// flag without `no`.
fn tmpfs_option_key(option: &str) -> &str {
    match option.split_once('=') {
        Some((key, _)) => key,
        None => match option {
            "noexec" | "exec" => "exec",
            "nosuid" | "suid" => "suid",
            "nodev" | "dev" => "dev",
            "ro" | "rw" => "ro",
            other => other,
        },
    }
}

/// `16m`, `1G`, `4096`: a number with an optional k, m or g (either case)
/// that fits in 64 bits.
fn tmpfs_amount(value: &str) -> bool {
    let (digits, shift) = match value.as_bytes().last().map(u8::to_ascii_lowercase) {
        Some(b'k') => (&value[..value.len() - 1], 10),
        Some(b'm') => (&value[..value.len() - 1], 20),
        Some(b'g') => (&value[..value.len() - 1], 30),
        _ => (value, 0),
    };
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits
            .parse::<u64>()
            .is_ok_and(|n| n.checked_shl(shift).is_some_and(|v| v >> shift == n))
}

/// Parses one `tmpfs` item, `/path[:OPTIONS]`. The mount's options are
/// docker's defaults (nosuid, nodev, noexec, mode=1777) with the given
/// ones replacing those they contradict.
pub fn parse_tmpfs(text: &str) -> Result<VolumeMount, String> {
    let (path, options) = match text.split_once(':') {
        Some((path, options)) => (path, Some(options)),
        None => (text, None),
    };
    let destination = parse_destination(path)?;
    let mut given: Vec<&str> = Vec::new();
    for option in options.into_iter().flat_map(|o| o.split(',')) {
        let ok = match option.split_once('=') {
            Some(("size" | "nr_inodes", value)) => tmpfs_amount(value),
            Some(("mode", value)) => {
                !value.is_empty()
                    && value.len() <= 4
                    && value.bytes().all(|b| (b'0'..=b'7').contains(&b))
            }
            Some(("uid" | "gid", value)) => value.parse::<u32>().is_ok(),
            Some(_) => false,
            None => matches!(
                option,
                "noexec" | "exec" | "nosuid" | "suid" | "nodev" | "dev" | "ro" | "rw"
            ),
        };
        if !ok {
            return Err(format!(
                "{text:?}: {option:?} is not a tmpfs option this manifest takes: {TMPFS_EXPECTED}"
            ));
        }
        let key = tmpfs_option_key(option);
        if let Some(earlier) = given.iter().find(|g| tmpfs_option_key(g) == key) {
            return Err(format!(
                "{text:?}: {option:?} repeats or contradicts {earlier:?}: give each option once"
            ));
        }
        given.push(option);
    }
    let mut options: Vec<String> = TMPFS_DEFAULTS.iter().map(|o| (*o).to_owned()).collect();
    for option in given {
        let key = tmpfs_option_key(option);
        match options.iter_mut().find(|o| tmpfs_option_key(o) == key) {
            Some(slot) => *slot = option.to_owned(),
            None => options.push(option.to_owned()),
        }
    }
    Ok(VolumeMount {
        destination,
        source: MountSource::Tmpfs { options },
    })
}

/// Parses one `volumes_from` item, `CONTAINER[:ro|:rw]`.
pub fn parse_volumes_from(text: &str) -> Result<VolumesFrom, String> {
    let (container, read_only) = match text.split_once(':') {
        None => (text, None),
        Some((container, "ro")) => (container, Some(true)),
        Some((container, "rw")) => (container, Some(false)),
        Some((_, other)) => {
            return Err(format!(
                "{text:?}: unknown mode {other:?}: expected \"CONTAINER\", \"CONTAINER:ro\" or \"CONTAINER:rw\""
            ))
        }
    };
    if !valid_name(container) {
        return Err(format!("{text:?} does not name a container"));
    }
    Ok(VolumesFrom {
        container: container.to_owned(),
        read_only,
    })
}

impl MountSource {
    /// How an error message names it.
    fn describe(&self) -> String {
        match self {
            MountSource::Volume { name, .. } => format!("volume {name:?}"),
            MountSource::Tmpfs { .. } => "a tmpfs".to_owned(),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

/// Reads and validates a manifest file.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates manifest text; `path` locates relative image paths and names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
    let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let invalid = |field: String, message: String| ManifestError::Invalid {
        path: path.to_owned(),
        field,
        message,
    };
    if !valid_name(&raw.name) {
        return Err(invalid(
            "name".into(),
            format!("{:?} must be 1-63 characters of a-z, 0-9 and '-'", raw.name),
        ));
    }
    let hostname = raw.hostname.unwrap_or_else(|| raw.name.clone());
    if hostname.is_empty()
        || hostname.len() > 64
        || !hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(invalid(
            "hostname".into(),
            format!("{hostname:?} is not a valid hostname"),
        ));
    }
    if raw.containers.is_empty() {
        return Err(invalid(
            "container".into(),
            "the manifest declares no container: add a [[container]] table".into(),
        ));
    }
    let data_size = raw
        .data_size
        .as_ref()
        .map(parse_bytes)
        .transpose()
        .map_err(|m| invalid("data_size".into(), m))?;
    if data_size.is_some_and(|size| size < MIN_DATA_SIZE) {
        return Err(invalid(
            "data_size".into(),
            format!(
                "must be at least {} (an ext4 disk needs room for its journal)",
                human_size(MIN_DATA_SIZE)
            ),
        ));
    }
    let mut volumes: Vec<String> = Vec::with_capacity(raw.volumes.len());
    for (k, v) in raw.volumes.into_iter().enumerate() {
        if !valid_volume_name(&v.name) {
            return Err(invalid(
                format!("volume[{k}].name"),
                format!(
                    "{:?} must be 1-64 characters of a-z, 0-9, '_', '.' and '-', starting with a letter or digit",
                    v.name
                ),
            ));
        }
        if volumes.contains(&v.name) {
            return Err(invalid(
                format!("volume[{k}].name"),
                format!(
                    "volume {:?} is declared twice; names must be unique",
                    v.name
                ),
            ));
        }
        volumes.push(v.name);
    }
    let (subnet, outbound, mtu) =
        parse_network(raw.network.as_ref()).map_err(|(field, m)| invalid(field.into(), m))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut containers = Vec::with_capacity(raw.containers.len());
    let mut nets: Vec<ContainerNet> = Vec::with_capacity(raw.containers.len());
    for (i, c) in raw.containers.into_iter().enumerate() {
        let field = |name: &str| format!("container[{i}].{name}");
        if !valid_name(&c.name) {
            return Err(invalid(
                field("name"),
                format!("{:?} must be 1-63 characters of a-z, 0-9 and '-'", c.name),
            ));
        }
        if containers
            .iter()
            .any(|other: &Container| other.name == c.name)
        {
            return Err(invalid(
                field("name"),
                format!(
                    "{:?} is used by another container; names must be unique",
                    c.name
                ),
            ));
        }
        let image = match (&c.image, &c.build) {
            (Some(text), None) => {
                parse_image_ref(text, base).map_err(|m| invalid(field("image"), m))?
            }
            (None, Some(build)) => {
                let tag = build_tag(&raw.name, &c.name).map_err(|m| invalid(field("build"), m))?;
                let spec = parse_build(build, base, tag)
                    .map_err(|m| invalid(field("build"), format!("container {:?}: {m}", c.name)))?;
                // One build for containers that build the same thing.
                let earlier = containers
                    .iter()
                    .find_map(|o: &Container| match &o.image.source {
                        ImageSource::Build(other) if other.same_build(&spec) => {
                            Some(o.image.clone())
                        }
                        _ => None,
                    });
                earlier.unwrap_or_else(|| ImageRef {
                    text: spec.tag.to_string(),
                    source: ImageSource::Build(spec),
                })
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    format!("container[{i}]"),
                    format!(
                        "container {:?} has both image and build: give image to use an existing \
                         image, or build to build one from a Dockerfile",
                        c.name
                    ),
                ))
            }
            (None, None) => {
                return Err(invalid(
                    format!("container[{i}]"),
                    format!(
                        "container {:?} has neither image nor build: give image = \"busybox:1.36\" \
                         (or another of {IMAGE_FORMS}) or build = \"path/to/context\"",
                        c.name
                    ),
                ))
            }
        };
        if let Some(command) = &c.command {
            if command.is_empty() || command[0].is_empty() {
                return Err(invalid(
                    field("command"),
                    "must name a program: command = [\"/bin/prog\", \"arg\"]".into(),
                ));
            }
        }
        for (j, kv) in c.env.iter().enumerate() {
            if !kv.contains('=') || kv.starts_with('=') {
                return Err(invalid(
                    format!("container[{i}].env[{j}]"),
                    format!("{kv:?} is not KEY=value"),
                ));
            }
        }
        let phase = match c.phase.as_deref() {
            None => Phase::default(),
            Some(p) => p
                .parse()
                .map_err(|e: hafen_proto::annotations::UnknownPhase| {
                    invalid(field("phase"), e.to_string())
                })?,
        };
        if let Some(sig) = &c.stop_signal {
            if hafen_proto::signal::parse(sig).is_none() {
                return Err(invalid(
                    field("stop_signal"),
                    format!("{sig:?} is not a signal name (SIGTERM, TERM) or number"),
                ));
            }
        }
        for (key, list) in [("cap_add", &c.cap_add), ("cap_drop", &c.cap_drop)] {
            for (j, cap) in list.iter().enumerate() {
                if !cap.eq_ignore_ascii_case("ALL") && hafen_proto::capability::parse(cap).is_none()
                {
                    return Err(invalid(
                        format!("container[{i}].{key}[{j}]"),
                        format!(
                            "{cap:?} is not a capability (such as \"CAP_NET_ADMIN\") or \"ALL\""
                        ),
                    ));
                }
            }
        }
        if let Some(user) = &c.user {
            if user.is_empty() || user.contains(char::is_whitespace) {
                return Err(invalid(
                    field("user"),
                    format!("{user:?} is not \"uid[:gid]\" or a user name"),
                ));
            }
        }
        let memory_bytes = c
            .memory
            .as_ref()
            .map(parse_bytes)
            .transpose()
            .map_err(|m| invalid(field("memory"), m))?;
        if memory_bytes.is_some_and(|m| m < 1 << 20) {
            return Err(invalid(field("memory"), "must be at least 1M".into()));
        }
        let log_size = c
            .log_size
            .as_ref()
            .map(|v| parse_log_size(v, &c.name))
            .transpose()
            .map_err(|m| invalid(field("log_size"), m))?;
        let millicpus = c
            .cpus
            .as_ref()
            .map(parse_cpus)
            .transpose()
            .map_err(|m| invalid(field("cpus"), m))?;
        let pids = match c.pids {
            None => None,
            Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => Some(n as u32),
            Some(n) => {
                return Err(invalid(
                    field("pids"),
                    format!("{n} is out of range (at least 1)"),
                ))
            }
        };
        let about = |message: String| format!("container {:?}: {message}", c.name);
        let restart = c
            .restart
            .as_ref()
            .map(parse_restart)
            .transpose()
            .map_err(|m| invalid(field("restart"), about(m)))?
            .unwrap_or_default();
        if phase == Phase::Once
            && matches!(
                restart,
                RestartPolicy::Always | RestartPolicy::UnlessStopped
            )
        {
            return Err(invalid(
                field("restart"),
                about(format!(
                    "a once container with restart = \"{restart}\" would never finish and \
                     would hold up the boot: use \"no\" or \"on-failure[:MAX]\", or make it a service"
                )),
            ));
        }
        let depends_on = c
            .depends_on
            .as_ref()
            .map(parse_depends_on)
            .transpose()
            .map_err(|m| invalid(field("depends_on"), about(m)))?
            .unwrap_or_default();
        if depends_on.iter().any(|d| d.name == c.name) {
            return Err(invalid(
                field("depends_on"),
                about("depends on itself, a cycle it could never start from".into()),
            ));
        }
        let healthcheck = c
            .healthcheck
            .as_ref()
            .map(parse_healthcheck)
            .transpose()
            .map_err(|m| invalid(field("healthcheck"), about(m)))?;
        let required = match c.required {
            None | Some(toml::Value::Boolean(false)) => false,
            Some(toml::Value::Boolean(true)) if phase == Phase::Once => true,
            Some(toml::Value::Boolean(true)) => {
                return Err(invalid(
                    field("required"),
                    about(
                        "only a once container can be required (its failure stops the boot); \
                         set phase = \"once\" or remove required"
                            .into(),
                    ),
                ))
            }
            Some(other) => {
                return Err(invalid(
                    field("required"),
                    about(format!("{other} is not true or false")),
                ))
            }
        };
        let mut mounts: Vec<(String, VolumeMount)> = Vec::new();
        let parsed = c
            .volumes
            .iter()
            .enumerate()
            .map(|(j, v)| {
                (
                    format!("container[{i}].volumes[{j}]"),
                    parse_volume(v, &volumes),
                )
            })
            .chain(
                c.tmpfs
                    .iter()
                    .enumerate()
                    .map(|(j, t)| (format!("container[{i}].tmpfs[{j}]"), parse_tmpfs(t))),
            );
        for (at, mount) in parsed {
            let mount = mount.map_err(|m| invalid(at.clone(), about(m)))?;
            if let Some((earlier, other)) = mounts
                .iter()
                .find(|(_, m)| m.destination == mount.destination)
            {
                return Err(invalid(
                    at,
                    about(format!(
                        "{} is mounted twice: {} here and {} at {earlier}",
                        mount.destination,
                        mount.source.describe(),
                        other.source.describe()
                    )),
                ));
            }
            mounts.push((at, mount));
        }
        let mut volumes_from: Vec<VolumesFrom> = Vec::with_capacity(c.volumes_from.len());
        for (j, text) in c.volumes_from.iter().enumerate() {
            let at = format!("container[{i}].volumes_from[{j}]");
            let from = parse_volumes_from(text).map_err(|m| invalid(at.clone(), about(m)))?;
            if from.container == c.name {
                return Err(invalid(
                    at,
                    about("takes volumes from itself; name another container".into()),
                ));
            }
            if volumes_from.iter().any(|f| f.container == from.container) {
                return Err(invalid(
                    at,
                    about(format!("{:?} is listed twice", from.container)),
                ));
            }
            volumes_from.push(from);
        }
        let container_net =
            parse_container_net(i, &c, outbound).map_err(|(at, m)| invalid(at, about(m)))?;
        nets.push(container_net);
        let security = Security {
            privileged: c.privileged,
            cap_add: c.cap_add,
            cap_drop: c.cap_drop,
            read_only: c.read_only,
            user: c.user,
            memory_bytes,
            millicpus,
            pids,
            userns: c.userns,
        };
        containers.push(Container {
            name: c.name,
            image,
            command: c.command,
            env: c.env,
            phase,
            stop_signal: c.stop_signal,
            stop_timeout: c.stop_timeout,
            log_size,
            main: false,
            security,
            restart,
            depends_on,
            healthcheck,
            required,
            mounts: mounts.into_iter().map(|(_, m)| m).collect(),
            volumes_from,
        });
    }
    check_volumes_from(&containers)
        .map_err(|(i, j, m)| invalid(format!("container[{i}].volumes_from[{j}]"), m))?;
    check_network_names(&nets).map_err(|(i, at, m)| {
        invalid(
            format!("container[{i}].{at}"),
            format!("container {:?}: {m}", nets[i].name),
        )
    })?;
    let network = NetworkConfig::new(subnet, outbound, mtu, nets)
        .map_err(|m| invalid("network.subnet".into(), m))?;
    check_plan(&containers)
        .map_err(|(i, e)| invalid(format!("container[{i}].depends_on"), e.to_string()))?;
    if let Some(main) = &raw.main {
        match containers.iter_mut().find(|c| &c.name == main) {
            Some(c) => c.main = true,
            None => {
                let declared: Vec<String> =
                    containers.iter().map(|c| format!("{:?}", c.name)).collect();
                return Err(invalid(
                    "main".into(),
                    format!(
                        "{main:?} is not a declared container (declared: {})",
                        declared.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(Manifest {
        path: path.to_owned(),
        name: raw.name,
        hostname,
        main: raw.main,
        containers,
        volumes,
        data_size,
        network,
    })
}

/// The `[network]` table: subnet, outbound and MTU, defaults filled in;
/// an error names its field.
fn parse_network(raw: Option<&RawNetwork>) -> Result<(Subnet, bool, u32), (&'static str, String)> {
    let Some(raw) = raw else {
        return Ok((Subnet::default(), false, net::DEFAULT_MTU));
    };
    let subnet = match &raw.subnet {
        Some(text) => text.parse::<Subnet>().map_err(|m| ("network.subnet", m))?,
        None => Subnet::default(),
    };
    let mtu = raw.mtu.unwrap_or(net::DEFAULT_MTU);
    if !(net::MIN_MTU..=net::MAX_MTU).contains(&mtu) {
        return Err((
            "network.mtu",
            format!(
                "{mtu} is out of range ({} to {}: QEMU's user networking takes no larger frames)",
                net::MIN_MTU,
                net::MAX_MTU
            ),
        ));
    }
    Ok((subnet, raw.outbound, mtu))
}

/// What a hostname is expected to look like.
const HOSTNAME_EXPECTED: &str = "1-64 characters of letters, digits, '-' and '.', each \
     dot-separated part starting and ending with a letter or digit";

/// One container's `network`, `ports`, `hostname` and `aliases`, each
/// checked on its own (clashes between containers are
/// [`check_network_names`]'s); an error is (field, message). The address is
/// assigned later, with everyone else's.
///
/// A UDP port needs `outbound`: QEMU's user networking in restricted mode
/// (libslirp's `restrict=on`) drops every UDP datagram the guest sends,
/// the replies to a published port included, so the port would take
/// requests and never answer.
fn parse_container_net(
    i: usize,
    c: &RawContainer,
    outbound: bool,
) -> Result<ContainerNet, (String, String)> {
    let field = |name: &str| format!("container[{i}].{name}");
    let mode = match c.network.as_deref() {
        None => NetworkMode::default(),
        Some(text) => text.parse().map_err(|m| (field("network"), m))?,
    };
    let hostname = c.hostname.clone().unwrap_or_else(|| c.name.clone());
    if !net::valid_hostname(&hostname) || hostname.len() > 64 {
        return Err((
            field("hostname"),
            format!("{hostname:?} is not a valid hostname: {HOSTNAME_EXPECTED}"),
        ));
    }
    if mode == NetworkMode::None && !c.ports.is_empty() {
        return Err((
            field("ports"),
            "a container with network = \"none\" has only loopback, so nothing could reach \
             a published port: remove ports or use network = \"bridge\""
                .into(),
        ));
    }
    if mode == NetworkMode::None && !c.aliases.is_empty() {
        return Err((
            field("aliases"),
            "a container with network = \"none\" cannot be reached by other containers, so \
             an alias would name nothing: remove aliases or use network = \"bridge\""
                .into(),
        ));
    }
    let mut ports = Vec::with_capacity(c.ports.len());
    for (j, spec) in c.ports.iter().enumerate() {
        let port = spec
            .parse::<PortMapping>()
            .map_err(|m| (format!("container[{i}].ports[{j}]"), m))?;
        if port.protocol == Protocol::Udp && !outbound {
            return Err((
                format!("container[{i}].ports[{j}]"),
                format!(
                    "{spec:?}: a UDP port needs [network] outbound = true: without it QEMU's user \
                     networking drops every UDP datagram the guest sends, replies included, so \
                     the port could never answer"
                ),
            ));
        }
        ports.push(port);
    }
    for (k, alias) in c.aliases.iter().enumerate() {
        if !net::valid_hostname(alias) {
            return Err((
                format!("container[{i}].aliases[{k}]"),
                format!("{alias:?} is not a valid host name: {HOSTNAME_EXPECTED}"),
            ));
        }
    }
    Ok(ContainerNet {
        name: c.name.clone(),
        mode,
        address: None,
        hostname,
        aliases: c.aliases.clone(),
        ports,
    })
}

/// Refuses what only shows across containers: an alias that is a
/// container's name or another alias, and a host address, port and
/// protocol published twice (0.0.0.0 overlapping every address). An error
/// is (container index, field under it, message).
fn check_network_names(nets: &[ContainerNet]) -> Result<(), (usize, String, String)> {
    for (i, c) in nets.iter().enumerate() {
        for (k, alias) in c.aliases.iter().enumerate() {
            let at = format!("aliases[{k}]");
            if let Some(owner) = nets.iter().find(|o| &o.name == alias) {
                let whose = if owner.name == c.name {
                    "the container's own name".to_owned()
                } else {
                    format!("the name of container {:?}", owner.name)
                };
                return Err((i, at, format!("alias {alias:?} is {whose}")));
            }
            let earlier = nets[..=i].iter().enumerate().find_map(|(i2, o)| {
                let limit = if i2 == i { k } else { o.aliases.len() };
                o.aliases[..limit]
                    .iter()
                    .position(|a| a == alias)
                    .map(|k2| (i2, k2))
            });
            if let Some((i2, k2)) = earlier {
                let what = if i2 == i {
                    format!("alias {alias:?} is listed twice (aliases[{k2}])")
                } else {
                    format!(
                        "alias {alias:?} is also an alias of container {:?} (container[{i2}].aliases[{k2}])",
                        nets[i2].name
                    )
                };
                return Err((i, at, what));
            }
        }
        for (j, port) in c.ports.iter().enumerate() {
            let earlier = nets[..=i].iter().enumerate().find_map(|(i2, o)| {
                let limit = if i2 == i { j } else { o.ports.len() };
                o.ports[..limit]
                    .iter()
                    .position(|p| p.clashes_with(port))
                    .map(|j2| (i2, j2))
            });
            if let Some((i2, j2)) = earlier {
                let other = nets[i2].ports[j2];
                let whose = if i2 == i {
                    format!("this container's ports[{j2}]")
                } else {
                    format!(
                        "container {:?} (container[{i2}].ports[{j2}])",
                        nets[i2].name
                    )
                };
                return Err((
                    i,
                    format!("ports[{j}]"),
                    format!(
                        "host port {}:{}/{} is already published as {other} by {whose}; \
                         each host address, port and protocol can be published once",
                        port.host_ip, port.host_port, port.protocol
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The name of the anonymous volume an image's `VOLUME path` gives
/// `container`: `CONTAINER-` and the first 12 hex digits of the path's
/// sha256, the same on every build, so its data outlive rebuilds.
pub fn anonymous_volume_name(container: &str, destination: &str) -> String {
    let digest = Sha256::digest(destination.as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{container}-{hex}")
}

/// Everything mounted into each container besides its image and the
/// default mounts: its own `volumes` and `tmpfs`, the volumes of the
/// containers in its `volumes_from` (theirs in turn included), then one
/// anonymous volume for each path of its image's `Volumes`
/// (`image_volumes[i]` for container `i`, in any order) that nothing else
/// is mounted at. A destination given twice is an error naming the
/// container and the entry.
pub fn resolve_mounts(
    manifest: &Manifest,
    image_volumes: &[Vec<String>],
) -> Result<Vec<Vec<VolumeMount>>, ManifestError> {
    let mut done: Vec<Option<Vec<VolumeMount>>> = vec![None; manifest.containers.len()];
    for i in 0..manifest.containers.len() {
        resolve_container(manifest, image_volumes, i, &mut done, 0)?;
    }
    Ok(done.into_iter().map(Option::unwrap_or_default).collect())
}

fn resolve_container(
    manifest: &Manifest,
    image_volumes: &[Vec<String>],
    i: usize,
    done: &mut [Option<Vec<VolumeMount>>],
    depth: usize,
) -> Result<Vec<VolumeMount>, ManifestError> {
    if let Some(mounts) = &done[i] {
        return Ok(mounts.clone());
    }
    let c = &manifest.containers[i];
    let invalid = |field: String, message: String| ManifestError::Invalid {
        path: manifest.path.clone(),
        field,
        message: format!("container {:?}: {message}", c.name),
    };
    // parse() refuses cycles; this bound keeps a hand-made Manifest from recursing forever.
    if depth > manifest.containers.len() {
        return Err(invalid(
            format!("container[{i}].volumes_from"),
            "volumes_from goes round in a cycle".into(),
        ));
    }
    let mut mounts = c.mounts.clone();
    for (j, from) in c.volumes_from.iter().enumerate() {
        let at = format!("container[{i}].volumes_from[{j}]");
        let Some(source) = manifest
            .containers
            .iter()
            .position(|o| o.name == from.container)
        else {
            return Err(invalid(
                at,
                format!("{:?} is not a declared container", from.container),
            ));
        };
        let theirs = resolve_container(manifest, image_volumes, source, done, depth + 1)?;
        for mount in theirs {
            let MountSource::Volume { name, read_only } = mount.source else {
                continue;
            };
            let mount = VolumeMount {
                destination: mount.destination,
                source: MountSource::Volume {
                    name,
                    read_only: from.read_only.unwrap_or(read_only),
                },
            };
            match mounts.iter().find(|m| m.destination == mount.destination) {
                Some(same) if *same == mount => {}
                Some(other) if other.source.describe() == mount.source.describe() => {
                    return Err(invalid(
                        at,
                        format!(
                            "{} is mounted twice: {} from {:?} comes both read-only and read-write",
                            mount.destination,
                            mount.source.describe(),
                            from.container
                        ),
                    ))
                }
                Some(other) => {
                    return Err(invalid(
                        at,
                        format!(
                            "{} is mounted twice: {} from {:?} and {}",
                            mount.destination,
                            mount.source.describe(),
                            from.container,
                            other.source.describe()
                        ),
                    ))
                }
                None => mounts.push(mount),
            }
        }
    }
    let mut anonymous: Vec<String> = Vec::new();
    for path in image_volumes.get(i).into_iter().flatten() {
        let destination = parse_destination(path).map_err(|e| {
            invalid(
                format!("container[{i}].image"),
                format!("the image's VOLUME {e}; Hafen cannot mount it"),
            )
        })?;
        anonymous.push(destination);
    }
    anonymous.sort();
    anonymous.dedup();
    for destination in anonymous {
        if mounts.iter().any(|m| m.destination == destination) {
            continue;
        }
        let name = anonymous_volume_name(&c.name, &destination);
        if manifest.volumes.contains(&name) {
            return Err(invalid(
                format!("container[{i}].image"),
                format!(
                    "the image's VOLUME {destination} gets the anonymous volume {name:?}, \
                     which a [[volume]] also declares: rename that volume"
                ),
            ));
        }
        mounts.push(VolumeMount {
            destination,
            source: MountSource::Volume {
                name,
                read_only: false,
            },
        });
    }
    done[i] = Some(mounts.clone());
    Ok(mounts)
}

/// Refuses `volumes_from` naming an unknown container or going round in a
/// cycle; the error comes with the container's index and the entry's.
fn check_volumes_from(containers: &[Container]) -> Result<(), (usize, usize, String)> {
    let index = |name: &str| containers.iter().position(|c| c.name == name);
    for (i, c) in containers.iter().enumerate() {
        for (j, from) in c.volumes_from.iter().enumerate() {
            if index(&from.container).is_none() {
                let declared: Vec<String> =
                    containers.iter().map(|c| format!("{:?}", c.name)).collect();
                return Err((
                    i,
                    j,
                    format!(
                        "container {:?} takes volumes from {:?}, which is not a declared container (declared: {})",
                        c.name,
                        from.container,
                        declared.join(", ")
                    ),
                ));
            }
        }
    }
    let mut state = vec![Visit::New; containers.len()];
    let mut path = Vec::new();
    for start in 0..containers.len() {
        if state[start] == Visit::New {
            visit_volumes_from(containers, start, &mut state, &mut path)?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visit {
    New,
    OnPath,
    Done,
}

/// Depth-first walk of the `volumes_from` edges from container `i`; `path`
/// holds the (container, entry) edges leading to it, so a cycle can be told
/// in full.
fn visit_volumes_from(
    containers: &[Container],
    i: usize,
    state: &mut [Visit],
    path: &mut Vec<(usize, usize)>,
) -> Result<(), (usize, usize, String)> {
    state[i] = Visit::OnPath;
    for (j, from) in containers[i].volumes_from.iter().enumerate() {
        let Some(target) = containers.iter().position(|c| c.name == from.container) else {
            continue;
        };
        match state[target] {
            Visit::New => {
                path.push((i, j));
                visit_volumes_from(containers, target, state, path)?;
                path.pop();
            }
            Visit::OnPath => {
                let begin = path
                    .iter()
                    .position(|(c, _)| *c == target)
                    .unwrap_or(path.len());
                let chain: Vec<String> = path[begin..]
                    .iter()
                    .chain(std::iter::once(&(i, j)))
                    .map(|&(c, k)| {
                        format!(
                            "{} takes volumes from {}",
                            containers[c].name, containers[c].volumes_from[k].container
                        )
                    })
                    .collect();
                return Err((
                    i,
                    j,
                    format!(
                        "container {:?}: volumes_from goes round in a cycle: {}",
                        containers[i].name,
                        chain.join(", ")
                    ),
                ));
            }
            Visit::Done => {}
        }
    }
    state[i] = Visit::Done;
    Ok(())
}

/// Refuses dependencies on unknown names and cycles, as PID 1's start
/// plan would meet them; the error comes with the index of the container
/// it was found on.
fn check_plan(containers: &[Container]) -> Result<(), (usize, supervision::PlanError)> {
    let nodes: Vec<supervision::Node<'_>> = containers
        .iter()
        .map(|c| supervision::Node {
            name: &c.name,
            phase: c.phase,
            depends_on: &c.depends_on,
        })
        .collect();
    let (_, errors) = supervision::plan(&nodes);
    match errors.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(()),
    }
}

/// Refuses a `healthy` dependency on a container that has no health check
/// (`has_check[i]` for the manifest's container `i`, once the images' own
/// checks are known): it could never become healthy.
pub fn check_healthy_dependencies(
    manifest: &Manifest,
    has_check: &[bool],
) -> Result<(), ManifestError> {
    for (i, c) in manifest.containers.iter().enumerate() {
        for dep in c
            .depends_on
            .iter()
            .filter(|d| d.condition == Condition::Healthy)
        {
            let Some(on) = manifest.containers.iter().position(|o| o.name == dep.name) else {
                continue;
            };
            if !has_check.get(on).copied().unwrap_or(false) {
                return Err(ManifestError::Invalid {
                    path: manifest.path.clone(),
                    field: format!("container[{i}].depends_on"),
                    message: format!(
                        "{on_name} has no health check: add healthcheck to {on_name} or depend \
                         on it being started (container {:?} waits for it to be healthy; \
                         neither the manifest nor {on_name}'s image gives it a check)",
                        c.name,
                        on_name = dep.name
                    ),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Manifest, ManifestError> {
        parse(text, Path::new("/m/hafen.toml"))
    }

    const GOOD: &str = r#"
name = "hello"
[[container]]
name = "greet"
image = "oci:images/busybox:1"
command = ["/bin/echo", "hi"]
env = ["A=b"]
phase = "once"
stop_signal = "SIGUSR1"
stop_timeout = 3
[[container]]
name = "svc"
image = "oci:/abs/layout"
"#;

    #[test]
    fn a_valid_manifest_parses_with_defaults() {
        let m = parse_str(GOOD).expect("valid");
        assert_eq!(m.hostname, "hello");
        assert_eq!(m.containers.len(), 2);
        let greet = &m.containers[0];
        assert_eq!(
            greet.image.source,
            ImageSource::Oci {
                layout: PathBuf::from("/m/images/busybox"),
                tag: Some("1".into())
            }
        );
        assert_eq!(greet.phase, Phase::Once);
        assert_eq!(greet.stop_timeout, Some(3));
        let svc = &m.containers[1];
        assert_eq!(svc.phase, Phase::Service);
        assert_eq!(
            svc.image.source,
            ImageSource::Oci {
                layout: PathBuf::from("/abs/layout"),
                tag: None
            }
        );
    }

    fn error_of(text: &str) -> String {
        parse_str(text).expect_err("must fail").to_string()
    }

    #[test]
    fn unknown_keys_are_named() {
        let e =
            error_of("name = \"x\"\nbogus = 1\n[[container]]\nname = \"a\"\nimage = \"oci:i\"\n");
        assert!(e.contains("bogus") && e.contains("/m/hafen.toml"), "{e}");
        let e = error_of(
            "name = \"x\"\n[[container]]\nname = \"a\"\nimage = \"oci:i\"\nrestart_delay = \"1s\"\n",
        );
        assert!(e.contains("restart_delay"), "{e}");
    }

    fn one_container(body: &str) -> String {
        format!("name = \"demo\"\n[[container]]\nname = \"web\"\n{body}\n")
    }

    fn build_of(c: &Container) -> &BuildSpec {
        match &c.image.source {
            ImageSource::Build(spec) => spec,
            other => panic!("not a build: {other:?}"),
        }
    }

    #[test]
    fn build_as_a_string_is_the_context_next_to_the_manifest() {
        let m = parse_str(&one_container("build = \"app\"")).expect("valid");
        let web = &m.containers[0];
        let spec = build_of(web);
        assert_eq!(spec.context, PathBuf::from("/m/app"));
        assert_eq!(spec.dockerfile, PathBuf::from("/m/app/Dockerfile"));
        assert!(spec.args.is_empty());
        assert_eq!(spec.target, None);
        assert_eq!(spec.tag.to_string(), "localhost/hafen-build/demo:web");
        // The name the container's image goes by (hafen ps shows it).
        assert_eq!(web.image.text, "localhost/hafen-build/demo:web");
        let abs = parse_str(&one_container("build = \"/srv/ctx\"")).expect("absolute");
        assert_eq!(
            build_of(&abs.containers[0]).context,
            PathBuf::from("/srv/ctx")
        );
    }

    #[test]
    fn build_as_a_table_takes_composes_keys_with_dockerfile_relative_to_the_context() {
        let m = parse_str(&one_container(
            "build = { context = \"svc\", dockerfile = \"docker/Prod.Dockerfile\", \
             args = { VERSION = \"1.2\", EMPTY = \"\" }, target = \"final\" }",
        ))
        .expect("valid");
        let spec = build_of(&m.containers[0]);
        assert_eq!(spec.context, PathBuf::from("/m/svc"));
        assert_eq!(
            spec.dockerfile,
            PathBuf::from("/m/svc/docker/Prod.Dockerfile")
        );
        assert_eq!(
            spec.args.iter().collect::<Vec<_>>(),
            [
                (&"EMPTY".to_owned(), &String::new()),
                (&"VERSION".to_owned(), &"1.2".to_owned())
            ]
        );
        assert_eq!(spec.target.as_deref(), Some("final"));
        // The sub-table form, and context defaulting to the manifest's directory.
        let m = parse_str(
            "name = \"demo\"\n[[container]]\nname = \"web\"\n[container.build]\ntarget = \"t\"\n",
        )
        .expect("valid");
        let spec = build_of(&m.containers[0]);
        assert_eq!(spec.context.to_str(), Some("/m"));
        assert_eq!(spec.dockerfile.to_str(), Some("/m/Dockerfile"));
    }

    #[test]
    fn containers_with_the_same_build_share_one_image_named_after_the_first() {
        let m = parse_str(
            r#"
name = "demo"
[[container]]
name = "web"
build = "app"
[[container]]
name = "worker"
build = { context = "./app", dockerfile = "Dockerfile" }
[[container]]
name = "other"
build = { context = "app", target = "debug" }
"#,
        )
        .expect("valid");
        let [web, worker, other] = &m.containers[..] else {
            panic!("three containers")
        };
        assert_eq!(web.image, worker.image, "one build for the same spec");
        assert_eq!(worker.image.text, "localhost/hafen-build/demo:web");
        assert_ne!(other.image, web.image);
        assert_eq!(other.image.text, "localhost/hafen-build/demo:other");
    }

    #[test]
    fn the_built_images_name_is_a_reference_for_every_valid_name() {
        // A repository component cannot end with '-'; a tag can.
        let tag = build_tag("demo-", "web-").expect("a reference");
        assert_eq!(tag.to_string(), "localhost/hafen-build/demo:web-");
        assert_eq!(
            build_tag("a--b", "0").expect("a reference").to_string(),
            "localhost/hafen-build/a--b:0"
        );
    }

    #[test]
    fn image_and_build_are_one_or_the_other() {
        let e = error_of(&one_container("image = \"oci:i\"\nbuild = \"app\""));
        assert!(
            e.contains("container[0]:") && e.contains("both image and build"),
            "{e}"
        );
        let e = error_of(&one_container(""));
        assert!(
            e.contains("container[0]:") && e.contains("neither image nor build"),
            "{e}"
        );
    }

    #[test]
    fn bad_builds_name_the_field_and_what_is_wrong() {
        for (build, wanted) in [
            ("build = \"\"", "context is empty"),
            ("build = { context = \"\" }", "context is empty"),
            ("build = { dockerfile = \"\" }", "dockerfile is empty"),
            (
                "build = \"https://github.com/org/app.git\"",
                "is a URL: hafen build reads a local directory",
            ),
            ("build = \"git@github.com:org/app.git\"", "is a URL"),
            (
                "build = { context = \"app\", dockerfile_inline = \"FROM x\" }",
                "unknown field `dockerfile_inline`",
            ),
            (
                "build = { context = \"app\", network = \"host\" }",
                "unknown field `network`",
            ),
            ("build = 3", "3 is not a build"),
            ("build = [\"app\"]", "is not a build"),
            (
                "build = { args = { V = 1 } }",
                "V = 1 is not a string: write V = \"1\"",
            ),
            (
                "build = { args = [\"V=1\"] }",
                "args: [\"V=1\"] is not a table",
            ),
            (
                "build = { args = { \"A B\" = \"x\" } }",
                "\"A B\" is not a build argument",
            ),
            (
                "build = { target = \"\" }",
                "target: \"\" is not a stage name",
            ),
        ] {
            let e = error_of(&one_container(build));
            assert!(
                e.contains("container[0].build:") && e.contains(wanted),
                "{build}: {e}"
            );
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        let with = |extra: &str| {
            format!("name = \"x\"\n[[container]]\nname = \"a\"\nimage = \"oci:i\"\n{extra}")
        };
        for (extra, field) in [
            ("phase = \"daemon\"", "container[0].phase"),
            ("stop_signal = \"SIGNOPE\"", "container[0].stop_signal"),
            ("command = []", "container[0].command"),
            ("env = [\"NOEQUALS\"]", "container[0].env[0]"),
        ] {
            let e = error_of(&with(extra));
            assert!(e.contains(field), "{extra}: {e}");
        }
        let e = error_of("name = \"x\"\n[[container]]\nname = \"Bad_Name\"\nimage = \"oci:i\"\n");
        assert!(e.contains("container[0].name"), "{e}");
        let e = error_of("name = \"x\"\n[[container]]\nname = \"a\"\nimage = \"oci:i\"\n[[container]]\nname = \"a\"\nimage = \"oci:i\"\n");
        assert!(
            e.contains("container[1].name") && e.contains("unique"),
            "{e}"
        );
        let e =
            error_of("name = \"x\"\n[[container]]\nname = \"a\"\nimage = \"docker.io/Busybox\"\n");
        assert!(
            e.contains("container[0].image") && e.contains("lowercase") && e.contains("oci:"),
            "{e}"
        );
        let e = error_of("name = \"x\"\n");
        assert!(e.contains("no container"), "{e}");
        let e = error_of("name = \"x\"\n[[container]]\nname = \"a\"\n");
        assert!(e.contains("image"), "missing image: {e}");
    }

    #[test]
    fn security_and_limit_keys_parse_and_bad_values_name_their_field() {
        let with = |extra: &str| {
            format!("name = \"x\"\n[[container]]\nname = \"a\"\nimage = \"oci:i\"\n{extra}")
        };
        let m = parse_str(&with("privileged = false\ncap_add = [\"CAP_NET_ADMIN\"]\ncap_drop = [\"ALL\"]\nread_only = true\nuser = \"1000:1000\"\nmemory = \"64M\"\ncpus = 0.5\npids = 32\nuserns = true")).expect("valid");
        let s = &m.containers[0].security;
        assert_eq!(
            (s.memory_bytes, s.millicpus, s.pids),
            (Some(64 << 20), Some(500), Some(32))
        );
        assert!(s.read_only && s.userns && !s.privileged);
        for (extra, field) in [
            ("cap_add = [\"CAP_FLY\"]", "container[0].cap_add[0]"),
            ("memory = \"lots\"", "container[0].memory"),
            ("memory = \"12Q\"", "container[0].memory"),
            ("memory = 100", "container[0].memory"),
            ("cpus = 0", "container[0].cpus"),
            ("pids = 0", "container[0].pids"),
            ("user = \"\"", "container[0].user"),
            ("privileged = \"yes\"", "privileged"),
        ] {
            let e = error_of(&with(extra));
            assert!(e.contains(field), "{extra}: {e}");
        }
        assert_eq!(parse_bytes(&toml::Value::String("1G".into())), Ok(1 << 30));
        assert_eq!(parse_bytes(&toml::Value::Integer(4096)), Ok(4096));
    }

    #[test]
    fn main_names_a_declared_container_once_or_service() {
        let m = parse_str(&format!("main = \"greet\"\n{GOOD}")).expect("valid");
        assert_eq!(m.main.as_deref(), Some("greet"));
        let flags: Vec<bool> = m.containers.iter().map(|c| c.main).collect();
        assert_eq!(flags, [true, false], "the once container greet is main");
        let m = parse_str(&format!("main = \"svc\"\n{GOOD}")).expect("valid");
        let flags: Vec<bool> = m.containers.iter().map(|c| c.main).collect();
        assert_eq!(flags, [false, true]);
        let m = parse_str(GOOD).expect("valid");
        assert_eq!(m.main, None);
        assert!(m.containers.iter().all(|c| !c.main));
    }

    #[test]
    fn main_naming_no_container_lists_the_declared_ones() {
        let e = error_of(&format!("main = \"web\"\n{GOOD}"));
        assert!(
            e.contains("/m/hafen.toml: main:")
                && e.contains("\"web\"")
                && e.contains("declared: \"greet\", \"svc\""),
            "{e}"
        );
        let e = error_of(&format!("main = 1\n{GOOD}"));
        assert!(e.contains("main"), "{e}");
    }

    #[test]
    fn log_size_takes_bytes_or_units_within_the_guests_limits() {
        let with = |value: &str| {
            format!("name = \"x\"\n[[container]]\nname = \"a\"\nimage = \"oci:i\"\nlog_size = {value}\n")
        };
        for (value, bytes) in [
            ("65536", 65536),
            ("\"512k\"", 512 << 10),
            ("\"1m\"", 1 << 20),
            ("\"4MiB\"", 4 << 20),
            ("\"4K\"", annotations::MIN_LOG_SIZE),
            ("\"64M\"", annotations::MAX_LOG_SIZE),
        ] {
            let m = parse_str(&with(value)).unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(m.containers[0].log_size, Some(bytes), "{value}");
        }
        let m = parse_str(GOOD).expect("valid");
        assert_eq!(
            m.containers[0].log_size, None,
            "absent: the guest's default"
        );
        for value in [
            "4095",
            "\"65M\"",
            "\"1G\"",
            "0",
            "-1",
            "\"lots\"",
            "\"1Q\"",
            "1.5",
            "\"99999999999999999999\"",
        ] {
            let e = error_of(&with(value));
            assert!(e.contains("container[0].log_size"), "{value}: {e}");
        }
        let e = error_of(&with("100"));
        assert!(
            e.contains("container \"a\"") && e.contains("4K to 64M"),
            "the range is stated: {e}"
        );
    }

    /// `[[container]]` tables named by the first item of each pair, with
    /// the second's lines added.
    fn with_containers(containers: &[(&str, &str)]) -> String {
        let mut text = "name = \"x\"\n".to_owned();
        for (name, extra) in containers {
            text.push_str(&format!(
                "[[container]]\nname = \"{name}\"\nimage = \"oci:i\"\n{extra}\n"
            ));
        }
        text
    }

    #[test]
    fn supervision_keys_parse() {
        let m = parse_str(&with_containers(&[
            ("db", "healthcheck = { test = [\"CMD-SHELL\", \"pg_isready\"], interval = \"1m30s\", timeout = \"500ms\", retries = 3, start_period = \"2h\", start_interval = \"250ms\" }"),
            ("migrate", "phase = \"once\"\nrequired = true\nrestart = \"on-failure:2\"\ndepends_on = [\"db\"]"),
            ("cache", "restart = \"unless-stopped\""),
            ("api", "restart = \"always\"\ndepends_on = { db = \"healthy\", migrate = \"service_completed_successfully\", cache = { condition = \"service_started\" } }"),
        ]))
        .expect("valid");
        let [db, migrate, cache, api] = &m.containers[..] else {
            panic!("four containers: {m:?}");
        };
        assert_eq!(
            db.healthcheck,
            Some(Healthcheck {
                test: vec!["CMD-SHELL".into(), "pg_isready".into()],
                interval_ns: 90_000_000_000,
                timeout_ns: 500_000_000,
                start_period_ns: 7_200_000_000_000,
                retries: 3,
                start_interval_ns: 250_000_000,
            })
        );
        assert_eq!(
            (db.restart, db.required, db.depends_on.len()),
            (RestartPolicy::No, false, 0),
            "defaults"
        );
        assert!(migrate.required);
        assert_eq!(migrate.restart, RestartPolicy::OnFailure { max: Some(2) });
        assert_eq!(
            supervision::format_depends_on(&migrate.depends_on),
            "db=started"
        );
        assert_eq!(cache.restart, RestartPolicy::UnlessStopped);
        assert_eq!(api.restart, RestartPolicy::Always);
        let mut conditions: Vec<String> = api
            .depends_on
            .iter()
            .map(|d| format!("{}={}", d.name, d.condition))
            .collect();
        conditions.sort();
        assert_eq!(
            conditions,
            ["cache=started", "db=healthy", "migrate=completed"]
        );

        let m = parse_str(&with_containers(&[
            ("a", "healthcheck = { test = \"curl -f localhost\" }"),
            ("b", "healthcheck = { test = [\"NONE\"] }"),
            ("c", "healthcheck = { retries = 5 }"),
        ]))
        .expect("valid");
        let tests: Vec<Vec<String>> = m
            .containers
            .iter()
            .map(|c| c.healthcheck.clone().expect("given").test)
            .collect();
        assert_eq!(
            tests,
            [
                vec!["CMD-SHELL".to_owned(), "curl -f localhost".to_owned()],
                vec!["NONE".to_owned()],
                vec![],
            ],
            "a string is a shell command; NONE disables; a left-out test keeps the image's"
        );
        assert_eq!(
            m.containers[2].healthcheck.as_ref().map(|h| h.retries),
            Some(5)
        );
    }

    #[test]
    fn bad_supervision_values_name_the_file_the_container_and_the_field() {
        for (extra, field, says) in [
            ("restart = \"sometimes\"", "restart", "unless-stopped"),
            ("restart = \"on-failure:x\"", "restart", "on-failure:MAX"),
            ("restart = 3", "restart", "on-failure"),
            (
                "depends_on = { db = \"ready\" }",
                "depends_on",
                "\"healthy\"",
            ),
            ("depends_on = [1]", "depends_on", "array of names"),
            ("depends_on = \"db\"", "depends_on", "array of names"),
            ("depends_on = [\"db\", \"db\"]", "depends_on", "twice"),
            (
                "depends_on = { db = { condition = \"service_healthy\", restart = true } }",
                "depends_on",
                "only condition",
            ),
            (
                "healthcheck = { test = [\"RUN\", \"x\"] }",
                "healthcheck",
                "CMD-SHELL",
            ),
            ("healthcheck = { test = [] }", "healthcheck", "empty"),
            ("healthcheck = { test = [\"CMD\"] }", "healthcheck", "CMD"),
            (
                "healthcheck = { test = [\"NONE\"], every = \"5s\" }",
                "healthcheck",
                "every",
            ),
            (
                "healthcheck = { test = [\"NONE\"], interval = \"0s\" }",
                "healthcheck",
                "interval",
            ),
            (
                "healthcheck = { test = [\"NONE\"], interval = 5 }",
                "healthcheck",
                "interval",
            ),
            (
                "healthcheck = { test = [\"NONE\"], timeout = \"5d\" }",
                "healthcheck",
                "timeout",
            ),
            (
                "healthcheck = { test = [\"NONE\"], start_period = \"-1s\" }",
                "healthcheck",
                "start_period",
            ),
            (
                "healthcheck = { test = [\"NONE\"], retries = 0 }",
                "healthcheck",
                "retries",
            ),
            (
                "healthcheck = { test = [\"NONE\"], retries = 99999999999 }",
                "healthcheck",
                "retries",
            ),
            ("healthcheck = \"curl\"", "healthcheck", "not a table"),
            ("required = \"yes\"", "required", "true or false"),
            ("required = true", "required", "phase = \"once\""),
            (
                "phase = \"once\"\nrestart = \"always\"",
                "restart",
                "on-failure",
            ),
            (
                "phase = \"once\"\nrestart = \"unless-stopped\"",
                "restart",
                "never finish",
            ),
        ] {
            let e = error_of(&with_containers(&[("db", ""), ("web", extra)]));
            assert!(
                e.starts_with("/m/hafen.toml: ")
                    && e.contains(&format!("container[1].{field}:"))
                    && e.contains("container \"web\"")
                    && e.contains(says),
                "{extra}: {e}"
            );
        }
        // Allowed: restarting a once container on failure, required without restarts.
        parse_str(&with_containers(&[(
            "a",
            "phase = \"once\"\nrestart = \"on-failure\"\nrequired = false",
        )]))
        .expect("on-failure is fine for a once container");
    }

    #[test]
    fn durations_take_ms_s_m_h_in_combination() {
        for (text, ns) in [
            ("500ms", 500_000_000),
            ("5s", 5_000_000_000),
            ("1m30s", 90_000_000_000),
            ("2h", 7_200_000_000_000),
            ("1h1m1s1ms", 3_661_001_000_000),
            ("0s1ms", 1_000_000),
        ] {
            assert_eq!(parse_duration(text), Ok(ns), "{text}");
        }
        for (text, says) in [
            ("", "empty"),
            ("0s", "zero"),
            ("0ms0h", "zero"),
            ("-5s", "not a duration"),
            ("5", "without a unit"),
            ("5d", "unknown unit \"d\""),
            ("1.5s", "not a duration"),
            ("5 s", "not a duration"),
            ("s", "not a duration"),
            ("99999999999999999999s", "too long"),
            ("6000000h", "too long"),
            ("18446744073709551615ms", "too long"),
        ] {
            let e = parse_duration(text).expect_err(text);
            assert!(
                e.contains(says) && e.contains("units ms, s, m, h"),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn unknown_dependencies_and_cycles_are_refused_naming_the_containers() {
        let e = error_of(&with_containers(&[("api", "depends_on = [\"ghost\"]")]));
        assert!(
            e.starts_with("/m/hafen.toml: container[0].depends_on:")
                && e.contains("container api depends on \"ghost\""),
            "{e}"
        );
        let e = error_of(&with_containers(&[
            ("a", "depends_on = [\"b\"]"),
            (
                "b",
                "depends_on = { a = \"healthy\" }\nhealthcheck = { test = [\"CMD\", \"true\"] }",
            ),
        ]));
        assert!(
            e.starts_with("/m/hafen.toml: ")
                && e.contains("a waits for b (started), b waits for a (healthy)"),
            "{e}"
        );
        let e = error_of(&with_containers(&[("a", "depends_on = [\"a\"]")]));
        assert!(
            e.contains("container[0].depends_on") && e.contains("\"a\": depends on itself"),
            "{e}"
        );
        // A once container waiting for a service that waits for a later once container.
        let e = error_of(&with_containers(&[
            ("first", "phase = \"once\"\ndepends_on = [\"svc\"]"),
            ("svc", "depends_on = { second = \"completed\" }"),
            ("second", "phase = \"once\""),
        ]));
        assert!(e.contains("once containers run in declared order"), "{e}");
    }

    #[test]
    fn healthy_dependencies_need_a_health_check() {
        let m = parse_str(&with_containers(&[
            ("db", ""),
            ("api", "depends_on = { db = \"healthy\" }"),
        ]))
        .expect("parses: the image may have a check");
        let e = check_healthy_dependencies(&m, &[false, false])
            .expect_err("db has no check")
            .to_string();
        assert!(
            e.starts_with("/m/hafen.toml: container[1].depends_on:")
                && e.contains(
                    "db has no health check: add healthcheck to db or depend on it being started"
                )
                && e.contains("container \"api\""),
            "{e}"
        );
        check_healthy_dependencies(&m, &[true, false]).expect("db has a check");
        let started = parse_str(&with_containers(&[
            ("db", ""),
            ("api", "depends_on = [\"db\"]"),
        ]))
        .expect("valid");
        check_healthy_dependencies(&started, &[false, false]).expect("started needs no check");
    }

    /// A manifest with `data_size`-like top-level lines, the volumes `db`
    /// and `config`, and the containers given.
    fn with_volumes(top: &str, containers: &[(&str, &str)]) -> String {
        let mut text = format!("{top}\n[[volume]]\nname = \"db\"\n[[volume]]\nname = \"config\"\n");
        text.push_str(&with_containers(containers).replacen("name = \"x\"\n", "", 1));
        format!("name = \"x\"\n{text}")
    }

    fn volume(name: &str, destination: &str, read_only: bool) -> VolumeMount {
        VolumeMount {
            destination: destination.into(),
            source: MountSource::Volume {
                name: name.into(),
                read_only,
            },
        }
    }

    fn tmpfs(destination: &str, options: &[&str]) -> VolumeMount {
        VolumeMount {
            destination: destination.into(),
            source: MountSource::Tmpfs {
                options: options.iter().map(|o| (*o).to_owned()).collect(),
            },
        }
    }

    #[test]
    fn volume_keys_parse() {
        let m = parse_str(&with_volumes(
            "data_size = \"2G\"",
            &[
                ("seed", "volumes = [\"db:/seed\"]"),
                (
                    "postgres",
                    "volumes = [\"db:/var/lib/postgresql/data/\", \"config:/etc//app:ro\", \"db:/backup:rw\"]\n\
                     tmpfs = [\"/run:size=16m,mode=0755\", \"/tmp\", \"/cache:exec,uid=70,gid=70,nr_inodes=1k,ro,size=1G\"]\n\
                     volumes_from = [\"seed:ro\"]",
                ),
                ("reader", "volumes_from = [\"postgres\", \"seed:rw\"]"),
            ],
        ))
        .expect("valid");
        assert_eq!(m.data_size, Some(2 << 30));
        assert_eq!(m.volumes, ["db", "config"]);
        let pg = &m.containers[1];
        assert_eq!(
            pg.mounts,
            [
                volume("db", "/var/lib/postgresql/data", false),
                volume("config", "/etc/app", true),
                volume("db", "/backup", false),
                tmpfs(
                    "/run",
                    &["nosuid", "nodev", "noexec", "mode=0755", "size=16m"]
                ),
                tmpfs("/tmp", &["nosuid", "nodev", "noexec", "mode=1777"]),
                tmpfs(
                    "/cache",
                    &[
                        "nosuid",
                        "nodev",
                        "exec",
                        "mode=1777",
                        "uid=70",
                        "gid=70",
                        "nr_inodes=1k",
                        "ro",
                        "size=1G"
                    ]
                ),
            ],
            "paths normalised, docker's tmpfs defaults replaced by what is given"
        );
        assert_eq!(
            pg.volumes_from,
            [VolumesFrom {
                container: "seed".into(),
                read_only: Some(true)
            }]
        );
        assert_eq!(
            m.containers[2].volumes_from,
            [
                VolumesFrom {
                    container: "postgres".into(),
                    read_only: None
                },
                VolumesFrom {
                    container: "seed".into(),
                    read_only: Some(false)
                }
            ]
        );
        // Nothing given: no data disk size, no volumes; a declared volume nobody mounts is fine.
        let m = parse_str(&with_volumes("", &[("a", "")])).expect("valid");
        assert_eq!(m.data_size, None);
        assert!(m.containers[0].mounts.is_empty() && m.containers[0].volumes_from.is_empty());
        let m = parse_str(GOOD).expect("valid");
        assert!(m.volumes.is_empty());
        let m = parse_str(&with_volumes("data_size = 33554432", &[("a", "")])).expect("valid");
        assert_eq!(m.data_size, Some(32 << 20));
    }

    #[test]
    fn bad_volumes_name_the_file_the_container_the_field_and_the_volume() {
        for (extra, field, says) in [
            ("volumes = [\"logs:/logs\"]", "volumes[0]", "volume \"logs\" is not declared: add [[volume]] name = \"logs\" (declared: \"db\", \"config\")"),
            ("volumes = [\"db:data\"]", "volumes[0]", "volume \"db\": \"data\" is not an absolute path"),
            ("volumes = [\"db:/data/../etc\"]", "volumes[0]", "volume \"db\": \"/data/../etc\" contains \"..\""),
            ("volumes = [\"db:/\"]", "volumes[0]", "the container's root"),
            ("volumes = [\"db:/proc/x\"]", "volumes[0]", "under /proc"),
            ("volumes = [\"db\"]", "volumes[0]", "has no path"),
            ("volumes = [\"db:/data:rx\"]", "volumes[0]", "unknown mode \"rx\""),
            ("volumes = [\"/srv/data:/data\"]", "volumes[0]", "host path"),
            (
                "volumes = [\"db:/data\", \"config:/data/\"]",
                "volumes[1]",
                "/data is mounted twice: volume \"config\" here and volume \"db\" at container[1].volumes[0]",
            ),
            (
                "volumes = [\"db:/data\"]\ntmpfs = [\"/data\"]",
                "tmpfs[0]",
                "/data is mounted twice: a tmpfs here and volume \"db\" at container[1].volumes[0]",
            ),
            ("tmpfs = [\"run\"]", "tmpfs[0]", "not an absolute path"),
            ("tmpfs = [\"/run/..\"]", "tmpfs[0]", "contains \"..\""),
            ("tmpfs = [\"/run:size=lots\"]", "tmpfs[0]", "\"size=lots\" is not a tmpfs option"),
            ("tmpfs = [\"/run:size=1t\"]", "tmpfs[0]", "\"size=1t\""),
            ("tmpfs = [\"/run:size=16mm\"]", "tmpfs[0]", "\"size=16mm\""),
            ("tmpfs = [\"/run:size=m\"]", "tmpfs[0]", "\"size=m\""),
            (
                "tmpfs = [\"/run:nr_inodes=99999999999g\"]",
                "tmpfs[0]",
                "\"nr_inodes=99999999999g\"",
            ),
            ("tmpfs = [\"/run:mode=0999\"]", "tmpfs[0]", "\"mode=0999\""),
            ("tmpfs = [\"/run:uid=-1\"]", "tmpfs[0]", "\"uid=-1\""),
            ("tmpfs = [\"/run:mpol=local\"]", "tmpfs[0]", "\"mpol=local\""),
            ("tmpfs = [\"/run:suid,\"]", "tmpfs[0]", "\"\" is not a tmpfs option"),
            ("tmpfs = [\"/run:exec,noexec\"]", "tmpfs[0]", "\"noexec\" repeats or contradicts \"exec\""),
            ("tmpfs = [\"/run:size=1m,size=2m\"]", "tmpfs[0]", "repeats"),
            ("tmpfs = [\"/run\", \"/run\"]", "tmpfs[1]", "/run is mounted twice"),
            ("volumes_from = [\"web\"]", "volumes_from[0]", "takes volumes from itself"),
            ("volumes_from = [\"ghost\"]", "volumes_from[0]", "takes volumes from \"ghost\", which is not a declared container (declared: \"seed\", \"web\")"),
            ("volumes_from = [\"seed:rx\"]", "volumes_from[0]", "unknown mode \"rx\""),
            ("volumes_from = [\"seed\", \"seed:ro\"]", "volumes_from[1]", "listed twice"),
        ] {
            let e = error_of(&with_volumes("", &[("seed", ""), ("web", extra)]));
            assert!(
                e.starts_with("/m/hafen.toml: ")
                    && e.contains(&format!("container[1].{field}"))
                    && e.contains("container \"web\"")
                    && e.contains(says),
                "{extra}: {e}"
            );
        }
    }

    #[test]
    fn volume_lists_of_the_wrong_type_are_toml_errors_naming_the_key() {
        for key in ["volumes", "tmpfs", "volumes_from"] {
            let e = error_of(&with_volumes(
                "",
                &[("web", &format!("{key} = \"db:/data\""))],
            ));
            assert!(
                e.contains(&format!("{key} = \"db:/data\"")) && e.contains("expected a sequence"),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_declared_volumes_and_data_sizes_name_their_field() {
        for (top, field, says) in [
            ("data_size = \"lots\"", "data_size:", "not a size"),
            ("data_size = \"1M\"", "data_size:", "at least 16M"),
            ("data_size = 0", "data_size:", "not a size"),
            ("data_size = true", "data_size:", "not a size"),
            (
                "[[volume]]\nname = \"Bad\"",
                "volume[0].name:",
                "\"Bad\" must be",
            ),
            (
                "[[volume]]\nname = \"-x\"",
                "volume[0].name:",
                "starting with a letter or digit",
            ),
            (
                "[[volume]]\nname = \"db\"\n[[volume]]\nname = \"db\"",
                "volume[1].name:",
                "declared twice",
            ),
            (
                "[[volume]]\nname = \"db\"\nsize = 1",
                "size",
                "unknown field",
            ),
        ] {
            let e = error_of(&format!(
                "name = \"x\"\n{top}\n[[container]]\nname = \"a\"\nimage = \"oci:i\"\n"
            ));
            assert!(
                e.starts_with("/m/hafen.toml: ") && e.contains(field) && e.contains(says),
                "{top}: {e}"
            );
        }
        assert!(valid_volume_name("pg_data.v2-1") && valid_volume_name("0"));
        assert!(
            !valid_volume_name("")
                && !valid_volume_name("_x")
                && !valid_volume_name(&"a".repeat(65))
        );
    }

    #[test]
    fn volumes_from_cycles_are_refused_naming_every_step() {
        let e = error_of(&with_volumes(
            "",
            &[
                ("a", "volumes_from = [\"b\"]"),
                ("b", "volumes_from = [\"c:ro\"]"),
                ("c", "volumes_from = [\"a\"]"),
            ],
        ));
        assert!(
            e.starts_with("/m/hafen.toml: container[2].volumes_from[0]:")
                && e.contains("container \"c\": volumes_from goes round in a cycle: a takes volumes from b, b takes volumes from c, c takes volumes from a"),
            "{e}"
        );
        let e = error_of(&with_volumes(
            "",
            &[
                ("a", ""),
                ("b", "volumes_from = [\"a\", \"c\"]"),
                ("c", "volumes_from = [\"b\"]"),
            ],
        ));
        assert!(
            e.contains("container[2].volumes_from[0]")
                && e.contains("b takes volumes from c, c takes volumes from b"),
            "{e}"
        );
        // A diamond is no cycle.
        parse_str(&with_volumes(
            "",
            &[
                ("a", ""),
                ("b", "volumes_from = [\"a\"]"),
                ("c", "volumes_from = [\"a\"]"),
                ("d", "volumes_from = [\"b\", \"c\"]"),
            ],
        ))
        .expect("a diamond is fine");
    }

    #[test]
    fn mounts_resolve_through_volumes_from_and_image_volumes_become_anonymous() {
        let m = parse_str(&with_volumes(
            "",
            &[
                (
                    "seed",
                    "volumes = [\"db:/data\", \"config:/etc/app:ro\"]\ntmpfs = [\"/scratch\"]",
                ),
                ("mid", "volumes_from = [\"seed:ro\"]"),
                (
                    "last",
                    "volumes_from = [\"mid\"]\nvolumes = [\"db:/var/lib/x\"]\ntmpfs = [\"/cache\"]",
                ),
                ("rw", "volumes_from = [\"mid:rw\"]"),
            ],
        ))
        .expect("valid");
        let images = vec![
            vec!["/data".to_owned(), "/var/log/".to_owned()],
            vec![],
            vec![
                "/var/lib/x".to_owned(),
                "/cache".to_owned(),
                "/srv".to_owned(),
                "/data".to_owned(),
                "/etc".to_owned(),
            ],
            vec![],
        ];
        let all = resolve_mounts(&m, &images).expect("resolves");
        let log = anonymous_volume_name("seed", "/var/log");
        assert_eq!(
            all[0],
            [
                volume("db", "/data", false),
                volume("config", "/etc/app", true),
                tmpfs("/scratch", &["nosuid", "nodev", "noexec", "mode=1777"]),
                volume(&log, "/var/log", false),
            ],
            "an image VOLUME the manifest mounts something at is replaced; the others are anonymous"
        );
        assert_eq!(
            all[1],
            [
                volume("db", "/data", true),
                volume("config", "/etc/app", true),
                volume(&log, "/var/log", true),
            ],
            "every volume of seed, read-only; not its tmpfs"
        );
        assert_eq!(
            all[2],
            [
                volume("db", "/var/lib/x", false),
                tmpfs("/cache", &["nosuid", "nodev", "noexec", "mode=1777"]),
                volume("db", "/data", true),
                volume("config", "/etc/app", true),
                volume(&log, "/var/log", true),
                volume(&anonymous_volume_name("last", "/etc"), "/etc", false),
                volume(&anonymous_volume_name("last", "/srv"), "/srv", false),
            ],
            "its own, then volumes_from (transitively, keeping their mode), then anonymous sorted by path"
        );
        assert_eq!(
            all[3].iter().map(|v| v.source.clone()).collect::<Vec<_>>(),
            [
                MountSource::Volume {
                    name: "db".into(),
                    read_only: false
                },
                MountSource::Volume {
                    name: "config".into(),
                    read_only: false
                },
                MountSource::Volume {
                    name: log.clone(),
                    read_only: false
                },
            ],
            ":rw makes them writable"
        );
        // Stable across builds and distinct per container and path.
        assert_eq!(log, anonymous_volume_name("seed", "/var/log"));
        assert_eq!(log.len(), "seed-".len() + 12);
        assert!(log.starts_with("seed-") && valid_volume_name(&log), "{log}");
        assert_ne!(log, anonymous_volume_name("mid", "/var/log"));
        assert_ne!(log, anonymous_volume_name("seed", "/var/logs"));
    }

    #[test]
    fn a_destination_given_twice_through_volumes_from_or_a_bad_image_volume_is_named() {
        let m = parse_str(&with_volumes(
            "",
            &[
                ("a", "volumes = [\"db:/data\"]"),
                ("b", "volumes = [\"config:/data\"]"),
                ("c", "volumes_from = [\"a\", \"b\"]"),
            ],
        ))
        .expect("parses: the clash shows when mounts are resolved");
        let e = resolve_mounts(&m, &[vec![], vec![], vec![]])
            .expect_err("clash")
            .to_string();
        assert!(
            e.starts_with("/m/hafen.toml: container[2].volumes_from[1]: container \"c\": /data is mounted twice: volume \"config\" from \"b\" and volume \"db\""),
            "{e}"
        );
        let m = parse_str(&with_volumes(
            "",
            &[
                ("a", "volumes = [\"db:/data\"]"),
                ("b", "volumes = [\"db:/data:ro\"]"),
                ("c", "volumes_from = [\"a\", \"b\"]"),
            ],
        ))
        .expect("valid");
        let e = resolve_mounts(&m, &[vec![], vec![], vec![]])
            .expect_err("modes")
            .to_string();
        assert!(
            e.contains("container[2].volumes_from[1]")
                && e.contains("both read-only and read-write"),
            "{e}"
        );
        // The same volume at the same path from two sources is mounted once.
        let m = parse_str(&with_volumes(
            "",
            &[
                ("a", "volumes = [\"db:/data\"]"),
                ("b", "volumes_from = [\"a\"]"),
                ("c", "volumes_from = [\"a\", \"b\"]"),
            ],
        ))
        .expect("valid");
        let all = resolve_mounts(&m, &[vec![], vec![], vec![]]).expect("resolves");
        assert_eq!(all[2], [volume("db", "/data", false)]);
        // volumes_from's mount at an image VOLUME's path replaces the anonymous one too.
        let all = resolve_mounts(&m, &[vec![], vec!["/data".into()], vec![]]).expect("resolves");
        assert_eq!(all[1], [volume("db", "/data", false)]);
        for (path, says) in [
            ("data", "not an absolute path"),
            ("/a/../b", "\"..\""),
            ("/proc/x", "under /proc"),
        ] {
            let e = resolve_mounts(&m, &[vec![], vec![], vec![path.into()]])
                .expect_err(path)
                .to_string();
            assert!(
                e.starts_with(
                    "/m/hafen.toml: container[2].image: container \"c\": the image's VOLUME"
                ) && e.contains(says),
                "{path}: {e}"
            );
        }
        // An anonymous name that a [[volume]] also declares.
        let taken = anonymous_volume_name("c", "/srv");
        let m = parse_str(&with_volumes(
            &format!("[[volume]]\nname = \"{taken}\""),
            &[("c", "")],
        ))
        .expect("valid");
        let e = resolve_mounts(&m, &[vec!["/srv".into()]])
            .expect_err("taken")
            .to_string();
        assert!(
            e.contains("container[0].image") && e.contains(&taken),
            "{e}"
        );
    }

    #[test]
    fn image_refs_split_tags_only_after_the_last_slash() {
        let base = Path::new("/b");
        let oci = |text: &str| parse_image_ref(text, base).map(|r| r.source);
        assert_eq!(
            oci("oci:dir/x:tag"),
            Ok(ImageSource::Oci {
                layout: "/b/dir/x".into(),
                tag: Some("tag".into())
            })
        );
        assert_eq!(
            oci("oci:weird:dir/x"),
            Ok(ImageSource::Oci {
                layout: "/b/weird:dir/x".into(),
                tag: None
            })
        );
        assert!(parse_image_ref("oci:", base).is_err());
        assert!(parse_image_ref("oci:x:", base).is_err());
        assert_eq!(
            oci("oci-archive:/a/img.tar:2"),
            Ok(ImageSource::OciArchive {
                file: "/a/img.tar".into(),
                tag: Some("2".into())
            })
        );
    }

    #[test]
    fn image_refs_without_a_transport_are_docker_references() {
        let base = Path::new("/b");
        let parse = |text: &str| parse_image_ref(text, base).map(|r| r.source);
        let reg = |text: &str| ImageSource::Registry(text.parse().expect("reference"));
        assert_eq!(
            parse("busybox:1.36"),
            Ok(reg("docker.io/library/busybox:1.36"))
        );
        assert_eq!(parse("docker://busybox"), Ok(reg("busybox:latest")));
        let pinned = format!("localhost:5000/app@sha256:{}", "a".repeat(64));
        assert_eq!(parse(&pinned), Ok(reg(&pinned)));
        let err = parse("Busybox").expect_err("uppercase");
        assert!(
            err.contains("lowercase") && err.contains("docker-archive:FILE"),
            "{err}"
        );
    }

    #[test]
    fn docker_archive_refs_split_at_the_first_colon_as_skopeo_does() {
        let base = Path::new("/b");
        let parse = |text: &str| parse_image_ref(text, base).map(|r| r.source);
        assert_eq!(
            parse("docker-archive:img.tar"),
            Ok(ImageSource::DockerArchive {
                file: "/b/img.tar".into(),
                pick: None
            })
        );
        assert_eq!(
            parse("docker-archive:img.tar:localhost:5000/app:2"),
            Ok(ImageSource::DockerArchive {
                file: "/b/img.tar".into(),
                pick: Some(ArchivePick::Name(
                    "localhost:5000/app:2".parse().expect("reference")
                ))
            })
        );
        assert_eq!(
            parse("docker-archive:img.tar:@1"),
            Ok(ImageSource::DockerArchive {
                file: "/b/img.tar".into(),
                pick: Some(ArchivePick::Index(1))
            })
        );
        assert!(parse("docker-archive:").is_err());
        assert!(parse("docker-archive:x.tar:@one").is_err());
        let pinned = format!("docker-archive:x.tar:app@sha256:{}", "a".repeat(64));
        assert!(parse(&pinned).expect_err("digest").contains("NAME:TAG"));
    }

    fn with_network(network: &str, containers: &[(&str, &str)]) -> String {
        format!("{}\n{network}\n", with_containers(containers))
    }

    #[test]
    fn network_defaults_give_every_container_its_own_stack_and_no_outbound_traffic() {
        let m = parse_str(&with_containers(&[("web", ""), ("db", "")])).expect("valid");
        let n = &m.network;
        assert_eq!(
            (n.subnet, n.prefix, n.gateway, n.dns, n.guest),
            (
                "10.0.2.0".parse().expect("ip"),
                24,
                "10.0.2.2".parse().expect("ip"),
                "10.0.2.3".parse().expect("ip"),
                "10.0.2.15".parse().expect("ip")
            )
        );
        assert!(!n.outbound, "outbound traffic is off unless asked for");
        assert_eq!(n.mtu, 1500);
        for (c, name) in n.containers.iter().zip(["web", "db"]) {
            assert_eq!((c.name.as_str(), c.hostname.as_str()), (name, name));
            assert_eq!(c.mode, NetworkMode::Bridge);
            assert!(c.ports.is_empty() && c.aliases.is_empty());
            let addr = c.address.expect("a bridge container has an address");
            assert!(Subnet::default().is_container_address(addr), "{addr}");
        }
        assert_ne!(n.containers[0].address, n.containers[1].address);
    }

    #[test]
    fn network_keys_parse() {
        let m = parse_str(&with_network(
            "[network]\noutbound = true\nsubnet = \"192.168.50.0/24\"\nmtu = 1400",
            &[
                (
                    "web",
                    "ports = [\"8080:80\", \"127.0.0.1:5353:53/udp\", \"0.0.0.0:8443:443/tcp\"]\nhostname = \"www.example.org\"\naliases = [\"www\", \"frontend\"]",
                ),
                ("proxy", "network = \"host\"\nports = [\"9000:9000\"]\naliases = [\"edge\"]"),
                ("batch", "network = \"none\"\nhostname = \"cruncher\""),
            ],
        ))
        .expect("valid");
        let n = &m.network;
        assert!(n.outbound);
        assert_eq!((n.mtu, n.prefix), (1400, 24));
        assert_eq!(
            n.guest,
            "192.168.50.15".parse::<std::net::Ipv4Addr>().expect("ip")
        );
        let [web, proxy, batch] = &n.containers[..] else {
            panic!("three containers: {n:?}")
        };
        assert_eq!(
            web.ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "127.0.0.1:8080->80/tcp",
                "127.0.0.1:5353->53/udp",
                "0.0.0.0:8443->443/tcp"
            ]
        );
        assert_eq!(web.hostname, "www.example.org");
        assert_eq!(web.aliases, ["www", "frontend"]);
        assert!(web
            .address
            .is_some_and(|a| a.octets()[..3] == [192, 168, 50]));
        assert_eq!((proxy.mode, proxy.address), (NetworkMode::Host, None));
        assert_eq!(proxy.aliases, ["edge"], "a host container may have aliases");
        assert_eq!((batch.mode, batch.address), (NetworkMode::None, None));
        assert_eq!(batch.hostname, "cruncher");
    }

    #[test]
    fn bad_network_settings_name_the_file_the_container_and_the_field() {
        for (network, second, field, says) in [
            ("", "ports = [\"80\"]", "container[1].ports[0]", "\"80\" gives no host port"),
            ("", "ports = [\"8080:80/sctp\"]", "container[1].ports[0]", "unknown protocol \"sctp\""),
            ("", "ports = [\"8080:http\"]", "container[1].ports[0]", "not a number"),
            ("", "ports = [\"0:80\"]", "container[1].ports[0]", "not 0"),
            ("", "ports = [\"8000-8001:80-81\"]", "container[1].ports[0]", "ranges"),
            ("", "ports = [\"[::1]:8080:80\"]", "container[1].ports[0]", "IPv6"),
            (
                "",
                "ports = [\"5353:53/udp\"]",
                "container[1].ports[0]",
                "\"5353:53/udp\": a UDP port needs [network] outbound = true",
            ),
            (
                "",
                "ports = [\"8081:81\", \"8080:80\"]",
                "container[1].ports[1]",
                "host port 127.0.0.1:8080/tcp is already published as 127.0.0.1:8080->80/tcp by container \"a\" (container[0].ports[0])",
            ),
            (
                "",
                "ports = [\"0.0.0.0:8080:80\"]",
                "container[1].ports[0]",
                "host port 0.0.0.0:8080/tcp is already published as 127.0.0.1:8080->80/tcp by container \"a\"",
            ),
            (
                "",
                "ports = [\"9090:90\", \"127.0.0.1:9090:91\"]",
                "container[1].ports[1]",
                "already published as 127.0.0.1:9090->90/tcp by this container's ports[0]",
            ),
            ("", "network = \"none\"\nports = [\"9090:90\"]", "container[1].ports", "network = \"none\" has only loopback"),
            ("", "network = \"none\"\naliases = [\"x\"]", "container[1].aliases", "cannot be reached"),
            ("", "network = \"bridged\"", "container[1].network", "unknown network mode \"bridged\""),
            ("", "aliases = [\"a\"]", "container[1].aliases[0]", "alias \"a\" is the name of container \"a\""),
            ("", "aliases = [\"b\"]", "container[1].aliases[0]", "alias \"b\" is the container's own name"),
            ("", "aliases = [\"www\"]", "container[1].aliases[0]", "alias \"www\" is also an alias of container \"a\" (container[0].aliases[0])"),
            ("", "aliases = [\"api\", \"api\"]", "container[1].aliases[1]", "alias \"api\" is listed twice (aliases[0])"),
            ("", "aliases = [\"no_underscores\"]", "container[1].aliases[0]", "not a valid host name"),
            ("", "hostname = \"-bad\"", "container[1].hostname", "\"-bad\" is not a valid hostname"),
            ("", "hostname = \"\"", "container[1].hostname", "not a valid hostname"),
            ("[network]\nsubnet = \"10.0.2.0/25\"", "", "network.subnet", "prefix"),
            ("[network]\nsubnet = \"10.0.2.7/24\"", "", "network.subnet", "did you mean 10.0.2.0/24"),
            ("[network]\nsubnet = \"ten\"", "", "network.subnet", "not a subnet"),
            ("[network]\nmtu = 9000", "", "network.mtu", "out of range"),
            ("[network]\nmtu = 40", "", "network.mtu", "out of range"),
        ] {
            let e = error_of(&with_network(
                network,
                &[("a", "ports = [\"8080:80\"]\naliases = [\"www\"]"), ("b", second)],
            ));
            let container = field.starts_with("container").then_some("container \"b\"");
            assert!(
                e.starts_with(&format!("/m/hafen.toml: {field}: "))
                    && container.is_none_or(|c| e.contains(c))
                    && e.contains(says),
                "{second}{network}: {e}"
            );
        }
    }

    #[test]
    fn network_keys_of_the_wrong_type_or_unknown_are_toml_errors() {
        for (network, container, key) in [
            ("[network]\noutbound = \"yes\"", "", "outbound"),
            ("[network]\nsubnets = \"10.0.2.0/24\"", "", "subnets"),
            ("", "ports = \"8080:80\"", "ports"),
            ("", "ports = [8080]", "ports"),
            ("", "port = [\"8080:80\"]", "port"),
        ] {
            let e = error_of(&with_network(network, &[("a", container)]));
            assert!(e.starts_with("/m/hafen.toml: ") && e.contains(key), "{e}");
        }
    }

    #[test]
    fn more_bridge_containers_than_the_subnet_holds_are_refused() {
        let names: Vec<String> = (0..225).map(|i| format!("c{i}")).collect();
        let containers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "")).collect();
        let e = error_of(&with_containers(&containers));
        assert!(
            e.contains("network.subnet") && e.contains("room for 224"),
            "{e}"
        );
        let with_host = with_containers(&containers).replacen(
            "name = \"c0\"\nimage = \"oci:i\"\n",
            "name = \"c0\"\nimage = \"oci:i\"\nnetwork = \"host\"\n",
            1,
        );
        parse_str(&with_host).expect("a host container needs no address");
    }
}
