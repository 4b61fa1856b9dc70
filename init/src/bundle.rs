//! Finding the container bundles in the guest and reading Hafen's policy from
//! their annotations.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use hafen_proto::annotations::{self, Phase, DEFAULT_STOP_TIMEOUT_SECS};
use hafen_proto::spec::Spec;
use hafen_proto::supervision::{self, Dependency, Healthcheck, RestartPolicy};

use crate::container::seccomp;

/// A container bundle as PID 1 runs it.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory's name.
    pub name: String,
    /// The bundle directory.
    pub dir: PathBuf,
    /// Its parsed `config.json`.
    pub spec: Spec,
    /// When it runs.
    pub phase: Phase,
    /// Declared position; `None` sorts after every numbered bundle.
    pub order: Option<u32>,
    /// Signal that asks it to stop.
    pub stop_signal: i32,
    /// Seconds between the stop signal and SIGKILL.
    pub stop_timeout_secs: u32,
    /// The image it was made from, as the manifest named it (may be empty).
    pub image: String,
    /// The machine shuts down when it ends.
    pub main: bool,
    /// Bytes of output kept in its log ring.
    pub log_size: u32,
    /// What happens when its init ends.
    pub restart: RestartPolicy,
    /// What it waits for before it starts.
    pub depends_on: Vec<Dependency>,
    /// Its health check, when it has one (never a `NONE` one) and the
    /// command it runs.
    pub healthcheck: Option<(Healthcheck, Vec<String>)>,
    /// A `once` container whose failure stops the boot.
    pub required: bool,
    /// The data-disk volumes it mounts.
    pub volumes: Vec<String>,
    /// Its seccomp profile as `hafen build` compiled it
    /// ([`seccomp::PROGRAM_FILE`]), when the bundle has one.
    pub seccomp_program: Option<seccomp::Program>,
}

impl Bundle {
    /// Its seccomp filter, which every process started in it gets too.
    pub fn seccomp(&self) -> Option<seccomp::Filter<'_>> {
        let profile = self.spec.linux.as_ref().and_then(|l| l.seccomp.as_ref())?;
        Some(match &self.seccomp_program {
            Some(program) => seccomp::Filter::Compiled(program),
            None => seccomp::Filter::Profile(profile),
        })
    }
}

/// A bundle that cannot be run.
#[derive(Debug)]
pub enum BundleError {
    /// Listing the containers directory failed.
    List { dir: PathBuf, source: io::Error },
    /// `config.json` could not be read.
    Read { path: PathBuf, source: io::Error },
    /// `config.json` is not a valid runtime spec.
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The compiled seccomp filter cannot be read or is malformed.
    Seccomp { path: PathBuf, message: String },
    /// An `org.hafen.*` annotation has a value we do not understand.
    Annotation {
        path: PathBuf,
        key: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleError::List { dir, source } => {
                write!(f, "cannot list {}: {source}", dir.display())
            }
            BundleError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            BundleError::Parse { path, source } => write!(
                f,
                "{} is not a valid OCI runtime config: {source}",
                path.display()
            ),
            BundleError::Seccomp { path, message } => write!(
                f,
                "{}: {message}; rebuild the image with this hafen",
                path.display()
            ),
            BundleError::Annotation {
                path,
                key,
                value,
                expected,
            } => {
                write!(
                    f,
                    "{}: annotation {key} = {value:?}: expected {expected}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for BundleError {}

/// Reads every bundle under `dir`, sorted by declared order then name.
/// Bundles that cannot be read are returned as errors beside the good ones,
/// so one broken bundle never stops the others.
pub fn discover(dir: &Path) -> (Vec<Bundle>, Vec<BundleError>) {
    let mut bundles = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (bundles, errors),
        Err(source) => {
            errors.push(BundleError::List {
                dir: dir.to_owned(),
                source,
            });
            return (bundles, errors);
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.join("config.json").is_file() {
            continue;
        }
        match load(&path) {
            Ok(bundle) => bundles.push(bundle),
            Err(e) => errors.push(e),
        }
    }
    bundles.sort_by(|a, b| {
        (a.order.is_none(), a.order, &a.name).cmp(&(b.order.is_none(), b.order, &b.name))
    });
    (bundles, errors)
}

/// Reads one bundle directory.
pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Read {
        path: path.clone(),
        source,
    })?;
    let spec: Spec = serde_json::from_str(&text).map_err(|source| BundleError::Parse {
        path: path.clone(),
        source,
    })?;
    let bad = |key: &'static str, value: &str, expected: &'static str| BundleError::Annotation {
        path: path.clone(),
        key,
        value: value.to_owned(),
        expected,
    };
    let phase = match spec.annotation(annotations::PHASE) {
        None => Phase::default(),
        Some(v) => v
            .parse()
            .map_err(|_| bad(annotations::PHASE, v, "\"once\" or \"service\""))?,
    };
    let order = match spec.annotation(annotations::ORDER) {
        None => None,
        Some(v) => Some(
            v.parse()
                .map_err(|_| bad(annotations::ORDER, v, "a whole number"))?,
        ),
    };
    let stop_signal = match spec.annotation(annotations::STOP_SIGNAL) {
        None => libc::SIGTERM,
        Some(v) => hafen_proto::signal::parse(v)
            .ok_or_else(|| bad(annotations::STOP_SIGNAL, v, "a signal name or number"))?,
    };
    let stop_timeout_secs = match spec.annotation(annotations::STOP_TIMEOUT) {
        None => DEFAULT_STOP_TIMEOUT_SECS,
        Some(v) => v
            .parse()
            .map_err(|_| bad(annotations::STOP_TIMEOUT, v, "whole seconds"))?,
    };
    let main = match spec.annotation(annotations::MAIN) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return Err(bad(annotations::MAIN, v, "\"true\" or \"false\"")),
    };
    let log_size = match spec.annotation(annotations::LOG_SIZE) {
        None => annotations::DEFAULT_LOG_SIZE,
        Some(v) => v
            .parse()
            .ok()
            .filter(|n| (annotations::MIN_LOG_SIZE..=annotations::MAX_LOG_SIZE).contains(n))
            .ok_or_else(|| bad(annotations::LOG_SIZE, v, "bytes, from 4096 to 67108864"))?,
    };
    let restart = match spec.annotation(annotations::RESTART) {
        None => RestartPolicy::No,
        Some(v) => v
            .parse()
            .map_err(|_| bad(annotations::RESTART, v, supervision::RESTART_EXPECTED))?,
    };
    let depends_on = match spec.annotation(annotations::DEPENDS_ON) {
        None => Vec::new(),
        Some(v) => supervision::parse_depends_on(v).map_err(|_| {
            bad(
                annotations::DEPENDS_ON,
                v,
                "NAME=started|healthy|completed items separated by commas",
            )
        })?,
    };
    let healthcheck = match spec.annotation(annotations::HEALTHCHECK) {
        None => None,
        Some(v) => {
            let expected =
                "a health check as JSON: {\"Test\": [\"CMD\", ...], \"Interval\": ns, ...}";
            let check: Healthcheck =
                serde_json::from_str(v).map_err(|_| bad(annotations::HEALTHCHECK, v, expected))?;
            check
                .command()
                .map_err(|_| bad(annotations::HEALTHCHECK, v, expected))?
                .map(|command| (check, command))
        }
    };
    let required = match spec.annotation(annotations::REQUIRED) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return Err(bad(annotations::REQUIRED, v, "\"true\" or \"false\"")),
    };
    let volumes = spec
        .annotation(annotations::VOLUMES)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| {
                    let valid = !n.starts_with('.')
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
                    valid.then(|| n.to_owned()).ok_or_else(|| {
                        bad(annotations::VOLUMES, v, "volume names separated by commas")
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let image = spec
        .annotation(annotations::IMAGE)
        .unwrap_or_default()
        .to_owned();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let program_path = dir.join(seccomp::PROGRAM_FILE);
    let seccomp_program = match std::fs::read(&program_path) {
        Ok(bytes) => {
            Some(
                seccomp::Program::from_bytes(&bytes).map_err(|e| BundleError::Seccomp {
                    path: program_path.clone(),
                    message: e.to_string(),
                })?,
            )
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(BundleError::Seccomp {
                path: program_path,
                message: e.to_string(),
            })
        }
    };
    Ok(Bundle {
        name,
        dir: dir.to_owned(),
        spec,
        phase,
        order,
        stop_signal,
        stop_timeout_secs,
        image,
        main,
        log_size,
        restart,
        depends_on,
        healthcheck,
        required,
        volumes,
        seccomp_program,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_bundle(root: &Path, name: &str, annotations: &str) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let json = format!(
            r#"{{"ociVersion": "1.0.2", "process": {{"args": ["/bin/true"], "cwd": "/"}},
            "root": {{"path": "rootfs"}}, "annotations": {{{annotations}}}}}"#
        );
        std::fs::write(dir.join("config.json"), json).expect("write");
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("hafen-bundle-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn a_compiled_filter_is_loaded_and_a_torn_one_is_an_error_naming_it() {
        let root = temp_dir("seccomp");
        write_bundle(&root, "good", "");
        write_bundle(&root, "torn", "");
        let profile = hafen_proto::spec::Seccomp {
            default_action: "SCMP_ACT_ALLOW".into(),
            ..Default::default()
        };
        let bytes = seccomp::compile(&profile).expect("compiles").to_bytes();
        std::fs::write(root.join("good").join(seccomp::PROGRAM_FILE), &bytes).expect("write");
        std::fs::write(
            root.join("torn").join(seccomp::PROGRAM_FILE),
            &bytes[..bytes.len() - 3],
        )
        .expect("write");
        let (bundles, errors) = discover(&root);
        assert_eq!(bundles.len(), 1);
        assert_eq!(
            bundles[0].seccomp_program.as_ref().map(|p| p.to_bytes()),
            Some(bytes)
        );
        let message = errors.iter().map(ToString::to_string).collect::<String>();
        assert!(
            message.contains("torn/seccomp.bpf") && message.contains("rebuild the image"),
            "{message}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn sorts_by_declared_order_then_name_and_reads_policy() {
        let root = temp_dir("order");
        write_bundle(
            &root,
            "zeta",
            r#""org.hafen.order": "0", "org.hafen.phase": "once""#,
        );
        write_bundle(
            &root,
            "alpha",
            r#""org.hafen.order": "1", "org.hafen.stop-signal": "SIGUSR1", "org.hafen.stop-timeout": "3""#,
        );
        write_bundle(&root, "dropped-in", "");
        let (bundles, errors) = discover(&root);
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<&str> = bundles.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha", "dropped-in"]);
        assert_eq!(bundles[0].phase, Phase::Once);
        assert_eq!(bundles[1].stop_signal, libc::SIGUSR1);
        assert_eq!(bundles[1].stop_timeout_secs, 3);
        assert_eq!(bundles[2].phase, Phase::Service);
        assert_eq!(bundles[2].stop_timeout_secs, DEFAULT_STOP_TIMEOUT_SECS);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn supervision_annotations_are_read_and_bad_ones_name_the_key() {
        let root = temp_dir("supervision");
        write_bundle(
            &root,
            "api",
            r#""org.hafen.restart": "on-failure:5", "org.hafen.depends-on": "db=healthy,migrate=completed",
               "org.hafen.healthcheck": "{\"Test\":[\"CMD-SHELL\",\"test -e /ok\"],\"Interval\":1000000000}",
               "org.hafen.required": "true""#,
        );
        write_bundle(
            &root,
            "off",
            r#""org.hafen.healthcheck": "{\"Test\":[\"NONE\"]}""#,
        );
        write_bundle(&root, "bad-restart", r#""org.hafen.restart": "sometimes""#);
        write_bundle(
            &root,
            "bad-check",
            r#""org.hafen.healthcheck": "{\"Test\":[\"CMD\"]}""#,
        );
        let (bundles, errors) = discover(&root);
        let api = bundles.iter().find(|b| b.name == "api").expect("api");
        assert_eq!(api.restart, RestartPolicy::OnFailure { max: Some(5) });
        assert_eq!(
            supervision::format_depends_on(&api.depends_on),
            "db=healthy,migrate=completed"
        );
        let (check, command) = api.healthcheck.as_ref().expect("check");
        assert_eq!(check.interval(), 1_000_000_000);
        assert_eq!(command, &["/bin/sh", "-c", "test -e /ok"]);
        assert!(api.required);
        let off = bundles.iter().find(|b| b.name == "off").expect("off");
        assert!(off.healthcheck.is_none());
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages
            .iter()
            .any(|m| m.contains("org.hafen.restart") && m.contains("unless-stopped")));
        assert!(messages.iter().any(|m| m.contains("org.hafen.healthcheck")));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_broken_bundle_is_reported_and_the_others_still_load() {
        let root = temp_dir("broken");
        write_bundle(&root, "good", "");
        write_bundle(&root, "bad-signal", r#""org.hafen.stop-signal": "SIGNOPE""#);
        std::fs::create_dir_all(root.join("bad-json")).expect("mkdir");
        std::fs::write(root.join("bad-json/config.json"), "{ not json").expect("write");
        let (bundles, errors) = discover(&root);
        assert_eq!(bundles.len(), 1);
        assert_eq!(bundles[0].name, "good");
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(
            messages
                .iter()
                .any(|m| m.contains("org.hafen.stop-signal") && m.contains("SIGNOPE")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("bad-json/config.json")
                && m.contains("not a valid OCI runtime config")),
            "{messages:?}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
