//! One OCI runtime bundle (`config.json`) per container: the image's
//! defaults overridden by the manifest, Hafen's policy in annotations.

use std::collections::BTreeMap;

use hafen_proto::annotations;
use hafen_proto::spec::{Linux, Mount, Namespace, Process, Root, Spec, User, OCI_VERSION};

use crate::manifest::Container;
use crate::oci::ImageConfig;
use crate::tree::Tree;

/// PATH when neither the image nor the manifest sets one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
}

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    Mount {
        destination: destination.to_owned(),
        kind: Some(kind.to_owned()),
        source: Some(source.to_owned()),
        options: options.iter().map(|o| (*o).to_owned()).collect(),
    }
}

/// The mounts every container gets.
pub fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    ]
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
    let user = match cfg.user.as_deref() {
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
    if let Some(sig) = &container.stop_signal {
        annotations.insert(annotations::STOP_SIGNAL.to_owned(), sig.clone());
    }
    if let Some(timeout) = container.stop_timeout {
        annotations.insert(annotations::STOP_TIMEOUT.to_owned(), timeout.to_string());
    }
    let namespaces = ["pid", "mount", "ipc", "uts"]
        .map(|kind| Namespace {
            kind: kind.to_owned(),
            path: None,
        })
        .to_vec();
    Ok(Spec {
        oci_version: OCI_VERSION.to_owned(),
        process: Some(Process {
            user,
            args,
            env: merge_env(cfg.env.as_deref().unwrap_or_default(), &container.env),
            cwd,
            ..Process::default()
        }),
        root: Some(Root {
            path: "rootfs".to_owned(),
            readonly: false,
        }),
        hostname: Some(container.name.clone()),
        mounts: default_mounts(),
        linux: Some(Linux {
            namespaces,
            ..Linux::default()
        }),
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
                layout: "x".into(),
                tag: None,
            },
            command: command.map(|c| c.into_iter().map(String::from).collect()),
            env: env.into_iter().map(String::from).collect(),
            phase: Phase::Once,
            stop_signal: Some("SIGUSR1".into()),
            stop_timeout: Some(4),
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
                "/sys"
            ]
        );
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
}
