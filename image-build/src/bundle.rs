//! One OCI runtime bundle (`config.json`) per container: the image's
//! defaults overridden by the manifest, Hafen's policy in annotations.

use std::collections::BTreeMap;

use hafen_proto::annotations;
use hafen_proto::capability;
use hafen_proto::layout;
use hafen_proto::net::{ContainerNet, NetworkMode, NET_DIR};
use hafen_proto::spec::{
    Capabilities, Cpu, DeviceRule, IdMapping, Linux, Memory, Mount, Namespace, Pids, Process,
    Resources, Root, Spec, User, OCI_VERSION,
};
use hafen_proto::supervision::{format_depends_on, Healthcheck, RestartPolicy};

use crate::manifest::{Container, MountSource, VolumeMount};
use crate::oci::ImageConfig;
use crate::tree::Tree;

/// PATH when neither the image nor the manifest sets one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// First host uid/gid a user-namespaced container's ids map to.
pub const USERNS_HOST_BASE: u32 = 100_000;
/// How many ids a user-namespaced container gets.
pub const USERNS_SIZE: u32 = 65_536;

pub use hafen_proto::spec::{MASKED_PATHS, READONLY_PATHS};

/// Device access a container gets: nothing, then read, write and mknod of
/// null, zero, full, random, urandom, tty, console, ptmx and the pty slaves.
pub fn default_device_rules() -> Vec<DeviceRule> {
    let char_dev = |major: i64, minor: Option<i64>| DeviceRule {
        allow: true,
        kind: Some("c".into()),
        major: Some(major),
        minor,
        access: Some("rwm".into()),
    };
    let mut rules = vec![DeviceRule {
        allow: false,
        kind: Some("a".into()),
        major: None,
        minor: None,
        access: Some("rwm".into()),
    }];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        rules.push(char_dev(major, Some(minor)));
    }
    rules.push(char_dev(136, None));
    rules
}

/// The capability set: Docker's default, `cap_add`, `cap_drop` (`ALL` for
/// every capability), or everything when privileged. Sorted by number.
pub fn capabilities(security: &crate::manifest::Security) -> Vec<String> {
    let all = || (0..capability::NAMES.len() as u32).collect::<Vec<u32>>();
    let is_all = |list: &[String]| list.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let mut caps: Vec<u32> = if security.privileged || is_all(&security.cap_add) {
        all()
    } else {
        capability::DEFAULT
            .iter()
            .filter_map(|c| capability::parse(c))
            .collect()
    };
    if !security.privileged {
        if is_all(&security.cap_drop) {
            caps.clear();
        }
        caps.extend(security.cap_add.iter().filter_map(|c| capability::parse(c)));
        caps.retain(|c| {
            !security
                .cap_drop
                .iter()
                .any(|d| capability::parse(d) == Some(*c))
        });
    }
    caps.sort_unstable();
    caps.dedup();
    caps.into_iter().map(capability::name).collect()
}

/// Why a bundle cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Neither the manifest nor the image says what to run.
    #[error("container {container}: nothing to run: the image has no Entrypoint or Cmd; set `command` in the manifest")]
    NoCommand {
        /// The container.
        container: String,
    },
    /// The user cannot be resolved in the image.
    #[error("container {container}: user {user:?}: {reason}")]
    User {
        /// The container.
        container: String,
        /// The user as written.
        user: String,
        /// Why.
        reason: String,
    },
    /// The health check the manifest and the image give together cannot run.
    #[error("container {container}: healthcheck: {reason}")]
    Healthcheck {
        /// The container.
        container: String,
        /// Why, and what to write instead.
        reason: String,
    },
}

/// The health check `container` runs, or `None`: the manifest's merged over
/// the image's field by field as docker does (a test, duration or retry
/// count the manifest leaves out comes from the image), the image's alone
/// when the manifest has none, and none at all when the result's test is
/// `["NONE"]` or neither gives one. An image check with an empty test is no
/// check.
pub fn healthcheck(
    container: &Container,
    image: &ImageConfig,
) -> Result<Option<Healthcheck>, BundleError> {
    let from_image = image
        .config
        .healthcheck
        .as_ref()
        .filter(|h| !h.test.is_empty());
    let fail = |reason: String| BundleError::Healthcheck {
        container: container.name.clone(),
        reason,
    };
    let check = match (&container.healthcheck, from_image) {
        (None, None) => return Ok(None),
        (None, Some(theirs)) => theirs.clone(),
        (Some(ours), theirs) => {
            let theirs = theirs.cloned().unwrap_or_default();
            let or = |a: u64, b: u64| if a == 0 { b } else { a };
            Healthcheck {
                test: if ours.test.is_empty() {
                    theirs.test
                } else {
                    ours.test.clone()
                },
                interval_ns: or(ours.interval_ns, theirs.interval_ns),
                timeout_ns: or(ours.timeout_ns, theirs.timeout_ns),
                start_period_ns: or(ours.start_period_ns, theirs.start_period_ns),
                start_interval_ns: or(ours.start_interval_ns, theirs.start_interval_ns),
                retries: if ours.retries == 0 {
                    theirs.retries
                } else {
                    ours.retries
                },
            }
        }
    };
    if check.test.is_empty() {
        return Err(fail(
            "no test, and the image has no health check to take it from: \
             add test = [\"CMD\", \"program\", \"arg\"] or [\"CMD-SHELL\", \"command\"]"
                .into(),
        ));
    }
    let from_manifest = container
        .healthcheck
        .as_ref()
        .is_some_and(|h| !h.test.is_empty());
    match check.command() {
        Ok(Some(_)) => Ok(Some(check)),
        Ok(None) => Ok(None),
        Err(e) if from_manifest => Err(fail(e)),
        Err(e) => Err(fail(format!(
            "the image's health check cannot run ({e}): give healthcheck a test, \
             or test = [\"NONE\"] to disable it"
        ))),
    }
}

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    Mount {
        destination: destination.to_owned(),
        kind: Some(kind.to_owned()),
        source: Some(source.to_owned()),
        options: options.iter().map(|o| (*o).to_owned()).collect(),
    }
}

pub use hafen_proto::spec::default_mounts;

/// Adds `mounts` (from [`crate::manifest::resolve_mounts`]) to `spec`:
/// each data-disk volume bound from `layout::VOLUMES_DIR/NAME`, each tmpfs
/// a fresh one, after the default mounts (one at a default mount's
/// destination replaces it), parents before what is mounted inside them;
/// and the volume names in `org.hafen.volumes` for PID 1 to create.
pub fn add_mounts(spec: &mut Spec, mounts: &[VolumeMount]) {
    spec.mounts
        .retain(|m| !mounts.iter().any(|v| v.destination == m.destination));
    let mut added: Vec<Mount> = Vec::with_capacity(mounts.len());
    let mut names: Vec<&str> = Vec::new();
    for volume in mounts {
        added.push(match &volume.source {
            MountSource::Volume { name, read_only } => {
                names.push(name);
                let mut options = vec!["rbind", "rprivate"];
                if *read_only {
                    options.push("ro");
                }
                options.extend(["nosuid", "nodev"]);
                mount(
                    &volume.destination,
                    "bind",
                    &format!("{}/{name}", layout::VOLUMES_DIR),
                    &options,
                )
            }
            MountSource::Tmpfs { options } => Mount {
                destination: volume.destination.clone(),
                kind: Some("tmpfs".to_owned()),
                source: Some("tmpfs".to_owned()),
                options: options.clone(),
            },
        });
    }
    // Stable: the given order among mounts of the same depth.
    added.sort_by_key(|m| m.destination.matches('/').count());
    spec.mounts.extend(added);
    names.sort_unstable();
    names.dedup();
    if !names.is_empty() {
        spec.annotations
            .insert(annotations::VOLUMES.to_owned(), names.join(","));
    }
}

/// Gives `spec` its network as `net` plans it: the hostname, a network
/// namespace of its own for `bridge` and `none` (PID 1 makes it before the
/// first start and fills in its path), and the `hosts`, `resolv.conf` and
/// `hostname` files PID 1 writes for it bound over the image's, last, so
/// nothing mounted at `/etc` hides them (docker does the same).
pub fn add_network(spec: &mut Spec, net: &ContainerNet) {
    spec.hostname = Some(net.hostname.clone());
    if net.mode != NetworkMode::Host {
        if let Some(linux) = spec.linux.as_mut() {
            linux.namespaces.push(Namespace {
                kind: "network".to_owned(),
                path: None,
            });
        }
    }
    for file in ["hosts", "resolv.conf", "hostname"] {
        spec.mounts.push(mount(
            &format!("/etc/{file}"),
            "bind",
            &format!("{NET_DIR}/{}/{file}", net.name),
            &["bind", "nosuid", "nodev", "noexec"],
        ));
    }
}

/// Merges `KEY=value` lists: later entries replace earlier ones with the same key, in place.
pub fn merge_env(base: &[String], overrides: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for kv in base.iter().chain(overrides) {
        let key = kv.split('=').next().unwrap_or(kv);
        match out.iter_mut().find(|e| e.split('=').next() == Some(key)) {
            Some(slot) => *slot = kv.clone(),
            None => out.push(kv.clone()),
        }
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.to_owned());
    }
    out
}

/// Resolves an image `User` (`uid`, `uid:gid`, `name`, `name:group`) against the image's /etc/passwd and /etc/group.
pub fn resolve_user(spec: &str, tree: &Tree) -> Result<User, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let lookup = |file: &str, name: &str, field: usize| -> Option<u32> {
        let text = tree.read_text(file)?;
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(field).and_then(|v| v.parse().ok()))
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => {
            let uid = lookup("etc/passwd", user, 2)
                .ok_or_else(|| "no such user in the image's /etc/passwd".to_owned())?;
            (uid, lookup("etc/passwd", user, 3))
        }
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup("etc/group", g, 2)
                .ok_or_else(|| format!("no group {g:?} in the image's /etc/group"))?,
        },
        None => primary_gid.unwrap_or(0),
    };
    Ok(User {
        uid,
        gid,
        additional_gids: Vec::new(),
    })
}

/// The runtime spec for `container`, running `image` whose flattened root lives at `lower_dir` in the guest.
pub fn spec(
    container: &Container,
    order: usize,
    image: &ImageConfig,
    tree: &Tree,
    lower_dir: &str,
) -> Result<Spec, BundleError> {
    let cfg = &image.config;
    let args = match &container.command {
        Some(command) => command.clone(),
        None => cfg
            .entrypoint
            .iter()
            .flatten()
            .chain(cfg.cmd.iter().flatten())
            .cloned()
            .collect(),
    };
    if args.is_empty() {
        return Err(BundleError::NoCommand {
            container: container.name.clone(),
        });
    }
    let sec = &container.security;
    let user = match sec.user.as_deref().or(cfg.user.as_deref()) {
        None | Some("") => User::default(),
        Some(u) => resolve_user(u, tree).map_err(|reason| BundleError::User {
            container: container.name.clone(),
            user: u.to_owned(),
            reason,
        })?,
    };
    let cwd = cfg
        .working_dir
        .clone()
        .filter(|d| d.starts_with('/'))
        .unwrap_or_else(|| "/".to_owned());
    let mut annotations = BTreeMap::new();
    annotations.insert(
        annotations::PHASE.to_owned(),
        container.phase.as_str().to_owned(),
    );
    annotations.insert(annotations::ORDER.to_owned(), order.to_string());
    annotations.insert(annotations::LOWER_DIRS.to_owned(), lower_dir.to_owned());
    annotations.insert(annotations::IMAGE.to_owned(), container.image.text.clone());
    if container.main {
        annotations.insert(annotations::MAIN.to_owned(), "true".to_owned());
    }
    if let Some(size) = container.log_size {
        annotations.insert(annotations::LOG_SIZE.to_owned(), size.to_string());
    }
    if let Some(sig) = &container.stop_signal {
        annotations.insert(annotations::STOP_SIGNAL.to_owned(), sig.clone());
    }
    if let Some(timeout) = container.stop_timeout {
        annotations.insert(annotations::STOP_TIMEOUT.to_owned(), timeout.to_string());
    }
    if container.restart != RestartPolicy::No {
        annotations.insert(
            annotations::RESTART.to_owned(),
            container.restart.to_string(),
        );
    }
    if !container.depends_on.is_empty() {
        annotations.insert(
            annotations::DEPENDS_ON.to_owned(),
            format_depends_on(&container.depends_on),
        );
    }
    if let Some(check) = healthcheck(container, image)? {
        let json = serde_json::to_string(&check).map_err(|e| BundleError::Healthcheck {
            container: container.name.clone(),
            reason: format!("cannot encode it: {e}"),
        })?;
        annotations.insert(annotations::HEALTHCHECK.to_owned(), json);
    }
    if container.required {
        annotations.insert(annotations::REQUIRED.to_owned(), "true".to_owned());
    }
    let mut namespaces = ["pid", "mount", "ipc", "uts"]
        .map(|kind| Namespace {
            kind: kind.to_owned(),
            path: None,
        })
        .to_vec();
    let caps = capabilities(sec);
    let mut linux = Linux::default();
    if !sec.privileged {
        linux.masked_paths = MASKED_PATHS.iter().map(|p| (*p).to_owned()).collect();
        linux.readonly_paths = READONLY_PATHS.iter().map(|p| (*p).to_owned()).collect();
        linux.seccomp = Some(crate::seccomp::default_profile(&caps));
    }
    if sec.userns {
        namespaces.push(Namespace {
            kind: "user".to_owned(),
            path: None,
        });
        let map = vec![IdMapping {
            container_id: 0,
            host_id: USERNS_HOST_BASE,
            size: USERNS_SIZE,
        }];
        linux.uid_mappings = map.clone();
        linux.gid_mappings = map;
    }
    if !sec.privileged {
        linux.resources = Some(Resources {
            devices: default_device_rules(),
            ..Resources::default()
        });
    }
    if sec.memory_bytes.is_some() || sec.millicpus.is_some() || sec.pids.is_some() {
        let memory = sec.memory_bytes.map(|m| {
            let m = i64::try_from(m).unwrap_or(i64::MAX);
            // memory+swap equal to memory: no swap.
            Memory {
                limit: Some(m),
                swap: Some(m),
                reservation: None,
            }
        });
        let cpu = sec.millicpus.map(|mc| Cpu {
            quota: Some(mc as i64 * 100),
            period: Some(100_000),
            ..Cpu::default()
        });
        let pids = sec.pids.map(|p| Pids {
            limit: i64::from(p),
        });
        let resources = linux.resources.get_or_insert_with(Resources::default);
        (resources.memory, resources.cpu, resources.pids) = (memory, cpu, pids);
    }
    linux.namespaces = namespaces;
    Ok(Spec {
        oci_version: OCI_VERSION.to_owned(),
        process: Some(Process {
            user,
            args,
            env: merge_env(cfg.env.as_deref().unwrap_or_default(), &container.env),
            cwd,
            no_new_privileges: !sec.privileged,
            capabilities: Some(Capabilities {
                bounding: caps.clone(),
                effective: caps.clone(),
                permitted: caps,
                inheritable: Vec::new(),
                ambient: Vec::new(),
            }),
            ..Process::default()
        }),
        root: Some(Root {
            path: "rootfs".to_owned(),
            readonly: sec.read_only,
        }),
        hostname: Some(container.name.clone()),
        mounts: default_mounts(),
        linux: Some(linux),
        annotations,
        ..Spec::default()
    })
}

#[cfg(test)]
mod tests {
    use hafen_proto::annotations::Phase;

    use super::*;
    use crate::manifest::ImageRef;
    use crate::oci::RunConfig;

    fn container(command: Option<Vec<&str>>, env: Vec<&str>) -> Container {
        Container {
            name: "web".into(),
            image: ImageRef {
                text: "oci:x".into(),
                source: crate::manifest::ImageSource::Oci {
                    layout: "x".into(),
                    tag: None,
                },
            },
            command: command.map(|c| c.into_iter().map(String::from).collect()),
            env: env.into_iter().map(String::from).collect(),
            phase: Phase::Once,
            stop_signal: Some("SIGUSR1".into()),
            stop_timeout: Some(4),
            log_size: None,
            main: false,
            security: crate::manifest::Security::default(),
            restart: RestartPolicy::No,
            depends_on: Vec::new(),
            healthcheck: None,
            required: false,
            mounts: Vec::new(),
            volumes_from: Vec::new(),
        }
    }

    fn image(user: Option<&str>) -> ImageConfig {
        ImageConfig {
            config: RunConfig {
                user: user.map(String::from),
                env: Some(vec!["PATH=/bin".into(), "A=image".into(), "B=image".into()]),
                entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
                cmd: Some(vec!["echo hi".into()]),
                working_dir: Some("/srv".into()),
                healthcheck: None,
                volumes: None,
            },
            ..ImageConfig::default()
        }
    }

    #[test]
    fn image_defaults_are_overridden_by_the_manifest() {
        let tree = Tree::new();
        let spec = spec(
            &container(None, vec!["B=manifest", "C=new"]),
            2,
            &image(None),
            &tree,
            "/var/lib/hafen/images/sha256-ab",
        )
        .expect("spec");
        let p = spec.process.expect("process");
        assert_eq!(p.args, ["/bin/sh", "-c", "echo hi"], "entrypoint + cmd");
        assert_eq!(p.env, ["PATH=/bin", "A=image", "B=manifest", "C=new"]);
        assert_eq!(p.cwd, "/srv");
        assert_eq!(spec.hostname.as_deref(), Some("web"));
        let a = &spec.annotations;
        assert_eq!(a["org.hafen.phase"], "once");
        assert_eq!(a["org.hafen.order"], "2");
        assert_eq!(a["org.hafen.stop-signal"], "SIGUSR1");
        assert_eq!(a["org.hafen.stop-timeout"], "4");
        assert_eq!(a["org.hafen.lower-dirs"], "/var/lib/hafen/images/sha256-ab");
        assert_eq!(a["org.hafen.image"], "oci:x");
        for key in [
            annotations::MAIN,
            annotations::LOG_SIZE,
            annotations::RESTART,
            annotations::DEPENDS_ON,
            annotations::HEALTHCHECK,
            annotations::REQUIRED,
        ] {
            assert!(
                !a.contains_key(key),
                "{key} left out unless the manifest sets it: {a:?}"
            );
        }
        let kinds: Vec<String> = spec
            .linux
            .expect("linux")
            .namespaces
            .into_iter()
            .map(|n| n.kind)
            .collect();
        assert_eq!(kinds, ["pid", "mount", "ipc", "uts"]);
        assert_eq!(
            spec.mounts
                .iter()
                .map(|m| m.destination.as_str())
                .collect::<Vec<_>>(),
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
    }

    #[test]
    fn containers_are_hardened_by_default_and_the_manifest_relaxes_or_tightens() {
        use crate::manifest::Security;
        let tree = Tree::new();
        let spec_of = |security: Security| {
            let mut c = container(None, vec![]);
            c.security = security;
            spec(&c, 0, &image(None), &tree, "/l").expect("spec")
        };
        let hardened = spec_of(Security::default());
        let p = hardened.process.as_ref().expect("process");
        assert!(p.no_new_privileges);
        let caps = p.capabilities.as_ref().expect("caps");
        assert_eq!(caps.bounding.len(), 14);
        assert!(caps.bounding.contains(&"CAP_NET_BIND_SERVICE".to_owned()));
        assert!(!caps.bounding.contains(&"CAP_SYS_ADMIN".to_owned()));
        let linux = hardened.linux.as_ref().expect("linux");
        assert!(linux.masked_paths.contains(&"/proc/kcore".to_owned()));
        assert!(linux.readonly_paths.contains(&"/proc/sys".to_owned()));
        assert_eq!(
            linux.seccomp.as_ref().expect("seccomp").default_action,
            "SCMP_ACT_ERRNO"
        );
        assert!(linux.uid_mappings.is_empty());
        let resources = linux.resources.as_ref().expect("device rules");
        assert!(resources.memory.is_none() && resources.pids.is_none());
        assert!(!resources.devices[0].allow, "everything is denied first");
        assert!(resources
            .devices
            .iter()
            .any(|d| d.allow && d.major == Some(1) && d.minor == Some(3)));

        let tuned = spec_of(Security {
            cap_add: vec!["CAP_NET_ADMIN".into()],
            cap_drop: vec!["CAP_KILL".into(), "net_raw".into()],
            read_only: true,
            user: Some("1000:1000".into()),
            memory_bytes: Some(64 << 20),
            millicpus: Some(500),
            pids: Some(20),
            userns: true,
            ..Security::default()
        });
        let p = tuned.process.as_ref().expect("process");
        let caps = &p.capabilities.as_ref().expect("caps").bounding;
        assert!(caps.contains(&"CAP_NET_ADMIN".to_owned()));
        assert!(
            !caps.contains(&"CAP_KILL".to_owned()) && !caps.contains(&"CAP_NET_RAW".to_owned())
        );
        assert_eq!((p.user.uid, p.user.gid), (1000, 1000));
        assert!(tuned.root.as_ref().expect("root").readonly);
        let linux = tuned.linux.as_ref().expect("linux");
        let r = linux.resources.as_ref().expect("resources");
        assert_eq!(r.memory.expect("memory").limit, Some(64 << 20));
        assert_eq!(r.cpu.as_ref().expect("cpu").quota, Some(50_000));
        assert_eq!(r.pids.expect("pids").limit, 20);
        assert!(linux.namespaces.iter().any(|n| n.kind == "user"));
        assert_eq!(linux.uid_mappings[0].host_id, USERNS_HOST_BASE);

        let privileged = spec_of(Security {
            privileged: true,
            ..Security::default()
        });
        let p = privileged.process.as_ref().expect("process");
        assert!(!p.no_new_privileges);
        assert_eq!(p.capabilities.as_ref().expect("caps").bounding.len(), 41);
        let linux = privileged.linux.as_ref().expect("linux");
        assert!(linux.seccomp.is_none() && linux.masked_paths.is_empty());
        let only_chown = Security {
            cap_drop: vec!["ALL".into()],
            cap_add: vec!["CAP_CHOWN".into()],
            ..Security::default()
        };
        assert_eq!(capabilities(&only_chown), ["CAP_CHOWN"]);
    }

    #[test]
    fn main_and_log_size_become_annotations() {
        let tree = Tree::new();
        let mut c = container(None, vec![]);
        c.main = true;
        c.log_size = Some(512 * 1024);
        let spec = spec(&c, 0, &image(None), &tree, "/l").expect("spec");
        let a = &spec.annotations;
        assert_eq!(a[annotations::MAIN], "true");
        assert_eq!(a[annotations::LOG_SIZE], "524288");
        assert_eq!(a[annotations::IMAGE], "oci:x");
    }

    fn check(test: &[&str], interval_ns: u64, retries: u32) -> Healthcheck {
        Healthcheck {
            test: test.iter().map(|s| (*s).to_owned()).collect(),
            interval_ns,
            retries,
            ..Healthcheck::default()
        }
    }

    #[test]
    fn supervision_keys_become_annotations() {
        use hafen_proto::supervision::{parse_depends_on, Condition, Dependency};
        let tree = Tree::new();
        let mut c = container(None, vec![]);
        c.restart = RestartPolicy::OnFailure { max: Some(5) };
        c.depends_on = vec![
            Dependency {
                name: "db".into(),
                condition: Condition::Healthy,
            },
            Dependency {
                name: "migrate".into(),
                condition: Condition::Completed,
            },
        ];
        c.healthcheck = Some(check(&["CMD", "wget", "-q"], 5_000_000_000, 2));
        c.required = true;
        let made = spec(&c, 0, &image(None), &tree, "/l").expect("spec");
        let a = &made.annotations;
        assert_eq!(a[annotations::RESTART], "on-failure:5");
        assert_eq!(a[annotations::DEPENDS_ON], "db=healthy,migrate=completed");
        assert_eq!(
            parse_depends_on(&a[annotations::DEPENDS_ON]).expect("PID 1 reads it back"),
            c.depends_on
        );
        assert_eq!(
            a[annotations::HEALTHCHECK],
            r#"{"Test":["CMD","wget","-q"],"Interval":5000000000,"Retries":2}"#
        );
        assert_eq!(a[annotations::REQUIRED], "true");

        c.restart = RestartPolicy::Always;
        let made = spec(&c, 0, &image(None), &tree, "/l").expect("spec");
        assert_eq!(made.annotations[annotations::RESTART], "always");
    }

    #[test]
    fn the_images_health_check_is_used_merged_or_disabled_by_the_manifest() {
        let c = container(None, vec![]);
        let mut img = image(None);
        img.config.healthcheck = Some(check(&["CMD-SHELL", "test -e /ok"], 7, 4));
        let annotation = |c: &Container, img: &ImageConfig| {
            spec(c, 0, img, &Tree::new(), "/l")
                .expect("spec")
                .annotations
                .get(annotations::HEALTHCHECK)
                .cloned()
        };

        // Carried over as it is when the manifest has none.
        assert_eq!(
            healthcheck(&c, &img).expect("ok"),
            Some(check(&["CMD-SHELL", "test -e /ok"], 7, 4))
        );
        assert_eq!(
            annotation(&c, &img).as_deref(),
            Some(r#"{"Test":["CMD-SHELL","test -e /ok"],"Interval":7,"Retries":4}"#)
        );

        // The manifest's test replaces the image's; what it leaves out is the image's.
        let mut ours = c.clone();
        ours.healthcheck = Some(check(&["CMD", "/bin/probe"], 0, 9));
        assert_eq!(
            healthcheck(&ours, &img).expect("ok"),
            Some(check(&["CMD", "/bin/probe"], 7, 9))
        );
        // A manifest check without a test keeps the image's test.
        ours.healthcheck = Some(check(&[], 11, 0));
        assert_eq!(
            healthcheck(&ours, &img).expect("ok"),
            Some(check(&["CMD-SHELL", "test -e /ok"], 11, 4))
        );

        // ["NONE"] in the manifest disables the image's check.
        ours.healthcheck = Some(check(&["NONE"], 0, 0));
        assert_eq!(healthcheck(&ours, &img).expect("ok"), None);
        assert_eq!(annotation(&ours, &img), None);

        // An image check with an empty test, or ["NONE"], is no check.
        img.config.healthcheck = Some(check(&[], 7, 4));
        assert_eq!(healthcheck(&c, &img).expect("ok"), None);
        img.config.healthcheck = Some(check(&["NONE"], 0, 0));
        assert_eq!(healthcheck(&c, &img).expect("ok"), None);

        // A manifest check with no test, over an image without one, cannot run.
        ours.healthcheck = Some(check(&[], 11, 0));
        img.config.healthcheck = None;
        let e = healthcheck(&ours, &img).expect_err("no test").to_string();
        assert!(
            e.contains("container web") && e.contains("healthcheck") && e.contains("no test"),
            "{e}"
        );
        // A broken image check names the image as its source.
        img.config.healthcheck = Some(check(&["CMD"], 0, 0));
        let e = healthcheck(&c, &img)
            .expect_err("bad image test")
            .to_string();
        assert!(e.contains("container web") && e.contains("image's"), "{e}");
    }

    #[test]
    fn an_image_configs_healthcheck_is_read_from_docker_json() {
        let json = r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/srv"],
            "Healthcheck":{"Test":["CMD","/bin/ok"],"Interval":1000000000,"Timeout":2000000000,
            "StartPeriod":3000000000,"Retries":5,"StartInterval":500000000}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let img: ImageConfig = serde_json::from_str(json).expect("image config");
        assert_eq!(
            img.config.healthcheck,
            Some(Healthcheck {
                test: vec!["CMD".into(), "/bin/ok".into()],
                interval_ns: 1_000_000_000,
                timeout_ns: 2_000_000_000,
                start_period_ns: 3_000_000_000,
                retries: 5,
                start_interval_ns: 500_000_000,
            })
        );
        let without: ImageConfig =
            serde_json::from_str(r#"{"config":{"Healthcheck":null}}"#).expect("null");
        assert_eq!(without.config.healthcheck, None);
    }

    #[test]
    fn an_image_configs_volumes_are_read_from_docker_json() {
        let json = r#"{"config":{"Cmd":["/srv"],"Volumes":{"/var/lib/db":{},"/data":{}}}}"#;
        let img: ImageConfig = serde_json::from_str(json).expect("image config");
        let paths: Vec<&String> = img.config.volumes.iter().flat_map(|v| v.keys()).collect();
        assert_eq!(paths, ["/data", "/var/lib/db"]);
        for json in [r#"{"config":{"Volumes":null}}"#, r#"{"config":{}}"#] {
            let img: ImageConfig = serde_json::from_str(json).expect("image config");
            assert_eq!(img.config.volumes, None, "{json}");
        }
    }

    #[test]
    fn volumes_become_bind_mounts_from_the_data_disk_and_an_annotation() {
        use crate::manifest::{anonymous_volume_name, parse_tmpfs, VolumeMount};
        let volume = |name: &str, destination: &str, read_only: bool| VolumeMount {
            destination: destination.into(),
            source: MountSource::Volume {
                name: name.into(),
                read_only,
            },
        };
        let anonymous = anonymous_volume_name("web", "/srv");
        let mounts = [
            volume("db", "/var/lib/db/sub", false),
            volume("config", "/etc/app", true),
            parse_tmpfs("/run:size=16m,mode=0755").expect("tmpfs"),
            parse_tmpfs("/dev/shm:size=1g").expect("tmpfs"),
            volume("db", "/var/lib", false),
            volume(&anonymous, "/srv", false),
        ];
        let mut c = container(None, vec![]);
        c.security.read_only = true;
        let mut made = spec(&c, 0, &image(None), &Tree::new(), "/l").expect("spec");
        add_mounts(&mut made, &mounts);
        let found: Vec<(&str, &str, &str, Vec<&str>)> = made
            .mounts
            .iter()
            .map(|m| {
                (
                    m.destination.as_str(),
                    m.kind.as_deref().unwrap_or(""),
                    m.source.as_deref().unwrap_or(""),
                    m.options.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        let bind = ["rbind", "rprivate", "nosuid", "nodev"];
        let source = format!("/run/hafen/data/volumes/{anonymous}");
        assert_eq!(
            found,
            [
                ("/proc", "proc", "proc", vec!["nosuid", "noexec", "nodev"]),
                (
                    "/dev",
                    "tmpfs",
                    "tmpfs",
                    vec!["nosuid", "strictatime", "mode=755", "size=65536k"]
                ),
                (
                    "/dev/pts",
                    "devpts",
                    "devpts",
                    vec![
                        "nosuid",
                        "noexec",
                        "newinstance",
                        "ptmxmode=0666",
                        "mode=0620"
                    ]
                ),
                (
                    "/dev/mqueue",
                    "mqueue",
                    "mqueue",
                    vec!["nosuid", "noexec", "nodev"]
                ),
                (
                    "/sys",
                    "sysfs",
                    "sysfs",
                    vec!["nosuid", "noexec", "nodev", "ro"]
                ),
                (
                    "/sys/fs/cgroup",
                    "cgroup",
                    "cgroup",
                    vec!["nosuid", "noexec", "nodev", "relatime", "ro"]
                ),
                (
                    "/run",
                    "tmpfs",
                    "tmpfs",
                    vec!["nosuid", "nodev", "noexec", "mode=0755", "size=16m"]
                ),
                ("/srv", "bind", source.as_str(), bind.to_vec()),
                (
                    "/etc/app",
                    "bind",
                    "/run/hafen/data/volumes/config",
                    vec!["rbind", "rprivate", "ro", "nosuid", "nodev"]
                ),
                (
                    "/dev/shm",
                    "tmpfs",
                    "tmpfs",
                    vec!["nosuid", "nodev", "noexec", "mode=1777", "size=1g"]
                ),
                (
                    "/var/lib",
                    "bind",
                    "/run/hafen/data/volumes/db",
                    bind.to_vec()
                ),
                (
                    "/var/lib/db/sub",
                    "bind",
                    "/run/hafen/data/volumes/db",
                    bind.to_vec()
                ),
            ],
            "after the defaults (the manifest's /dev/shm replacing the default one), \
             parents first, otherwise in the given order"
        );
        let mut names = ["config", "db", anonymous.as_str()];
        names.sort_unstable();
        assert_eq!(made.annotations[annotations::VOLUMES], names.join(","));
        assert!(
            made.root.as_ref().expect("root").readonly,
            "a read-only root keeps its rw volumes: mounts are separate"
        );

        // Only tmpfs: no data-disk volumes, no annotation.
        let mut made = spec(&c, 0, &image(None), &Tree::new(), "/l").expect("spec");
        add_mounts(&mut made, &[parse_tmpfs("/run").expect("tmpfs")]);
        assert!(!made.annotations.contains_key(annotations::VOLUMES));
        assert_eq!(made.mounts.len(), default_mounts().len() + 1);
    }

    #[test]
    fn command_replaces_entrypoint_and_cmd_and_path_gets_a_default() {
        let tree = Tree::new();
        let mut img = image(None);
        img.config.env = None;
        let spec = spec(
            &container(Some(vec!["/bin/true"]), vec![]),
            0,
            &img,
            &tree,
            "/l",
        )
        .expect("spec");
        let p = spec.process.expect("process");
        assert_eq!(p.args, ["/bin/true"]);
        assert_eq!(p.env, [DEFAULT_PATH]);
    }

    #[test]
    fn nothing_to_run_and_unknown_users_are_errors_naming_the_container() {
        let tree = Tree::new();
        let mut img = image(None);
        img.config.entrypoint = None;
        img.config.cmd = None;
        let e = spec(&container(None, vec![]), 0, &img, &tree, "/l")
            .expect_err("no command")
            .to_string();
        assert!(e.contains("container web") && e.contains("command"), "{e}");
        let e = spec(
            &container(None, vec![]),
            0,
            &image(Some("nobody")),
            &tree,
            "/l",
        )
        .expect_err("no passwd")
        .to_string();
        assert!(e.contains("container web") && e.contains("nobody"), "{e}");
    }

    #[test]
    fn users_resolve_by_number_or_through_the_images_passwd() {
        let mut tree = Tree::new();
        let passwd = b"root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n";
        let group = b"root:x:0:\nstaff:x:50:\n";
        tree.apply_layer(
            0,
            crate::tree::tests::tar_of(&[
                crate::tree::tests::E::File("etc/passwd", passwd),
                crate::tree::tests::E::File("etc/group", group),
            ])
            .as_slice(),
        )
        .expect("layer");
        assert_eq!(
            resolve_user("1000:1001", &tree).expect("numeric"),
            User {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            resolve_user("www", &tree).expect("name"),
            User {
                uid: 33,
                gid: 34,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            resolve_user("www:staff", &tree).expect("name:group"),
            User {
                uid: 33,
                gid: 50,
                additional_gids: vec![]
            }
        );
        assert!(resolve_user("ghost", &tree).is_err());
        assert!(resolve_user("www:ghosts", &tree).is_err());
    }

    #[test]
    fn the_network_gives_a_namespace_but_to_host_containers_and_its_files_last() {
        use hafen_proto::net::{ContainerNet, NetworkMode};
        let net = |mode| ContainerNet {
            name: "web".to_owned(),
            mode,
            address: None,
            hostname: "www-1".to_owned(),
            aliases: Vec::new(),
            ports: Vec::new(),
        };
        for mode in [NetworkMode::Bridge, NetworkMode::None, NetworkMode::Host] {
            let mut spec = Spec {
                linux: Some(Linux::default()),
                mounts: default_mounts(),
                ..Spec::default()
            };
            add_network(&mut spec, &net(mode));
            assert_eq!(spec.hostname.as_deref(), Some("www-1"));
            let own = spec.linux.as_ref().is_some_and(|l| {
                l.namespaces
                    .iter()
                    .any(|n| n.kind == "network" && n.path.is_none())
            });
            assert_eq!(own, mode != NetworkMode::Host, "{mode:?}");
            let last: Vec<String> = spec.mounts[spec.mounts.len() - 3..]
                .iter()
                .map(|m| format!("{} {}", m.destination, m.source.as_deref().unwrap_or("")))
                .collect();
            assert_eq!(
                last,
                [
                    "/etc/hosts /etc/hafen/net/web/hosts",
                    "/etc/resolv.conf /etc/hafen/net/web/resolv.conf",
                    "/etc/hostname /etc/hafen/net/web/hostname",
                ]
            );
        }
    }
}
