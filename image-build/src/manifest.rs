//! `hafen.toml`: what an image holds. Parsing rejects unknown keys and
//! checks every value, naming the file and the field in each error.

use std::path::{Path, PathBuf};

use hafen_proto::annotations::{self, Phase};
use serde::Deserialize;

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
    #[serde(default, rename = "container")]
    containers: Vec<RawContainer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    name: String,
    image: String,
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

/// `oci:PATH[:TAG]`, with PATH resolved against the manifest's folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// The reference as written.
    pub text: String,
    /// The OCI image layout directory.
    pub layout: PathBuf,
    /// The `org.opencontainers.image.ref.name` to pick, if given.
    pub tag: Option<String>,
}

/// Parses `oci:PATH[:TAG]`; the last `:` starts a tag only when no `/` follows it.
pub fn parse_image_ref(text: &str, base: &Path) -> Result<ImageRef, String> {
    let rest = text.strip_prefix("oci:").ok_or_else(|| {
        format!("{text:?} is not supported: use \"oci:PATH[:TAG]\" (an OCI image layout directory)")
    })?;
    let (path, tag) = match rest.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !path.is_empty() => (path, Some(tag)),
        _ => (rest, None),
    };
    if path.is_empty() {
        return Err(format!("{text:?} names no layout directory"));
    }
    if tag.is_some_and(str::is_empty) {
        return Err(format!("{text:?} has an empty tag"));
    }
    Ok(ImageRef {
        text: text.to_owned(),
        layout: base.join(path),
        tag: tag.map(str::to_owned),
    })
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
    let base = path.parent().unwrap_or(Path::new("."));
    let mut containers = Vec::with_capacity(raw.containers.len());
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
        let image = parse_image_ref(&c.image, base).map_err(|m| invalid(field("image"), m))?;
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
        });
    }
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
    })
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
        assert_eq!(greet.image.layout, PathBuf::from("/m/images/busybox"));
        assert_eq!(greet.image.tag.as_deref(), Some("1"));
        assert_eq!(greet.phase, Phase::Once);
        assert_eq!(greet.stop_timeout, Some(3));
        let svc = &m.containers[1];
        assert_eq!(svc.phase, Phase::Service);
        assert_eq!(svc.image.layout, PathBuf::from("/abs/layout"));
        assert_eq!(svc.image.tag, None);
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
            "name = \"x\"\n[[container]]\nname = \"a\"\nimage = \"oci:i\"\nrestart = \"always\"\n",
        );
        assert!(e.contains("restart"), "{e}");
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
            error_of("name = \"x\"\n[[container]]\nname = \"a\"\nimage = \"docker.io/busybox\"\n");
        assert!(
            e.contains("container[0].image") && e.contains("oci:"),
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

    #[test]
    fn image_refs_split_tags_only_after_the_last_slash() {
        let base = Path::new("/b");
        let r = parse_image_ref("oci:dir/x:tag", base).expect("ok");
        assert_eq!(
            (r.layout, r.tag.as_deref()),
            (PathBuf::from("/b/dir/x"), Some("tag"))
        );
        let r = parse_image_ref("oci:weird:dir/x", base).expect("ok");
        assert_eq!((r.layout, r.tag), (PathBuf::from("/b/weird:dir/x"), None));
        assert!(parse_image_ref("oci:", base).is_err());
        assert!(parse_image_ref("oci:x:", base).is_err());
    }
}
