//! The subset of the OCI runtime spec (`config.json`, version 1.0+) that Hafen
//! writes and runs. Unknown fields are ignored when reading, so any bundle
//! made by other tools still parses; fields Hafen writes are always spelled
//! as the spec spells them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The OCI runtime spec version Hafen writes.
pub const OCI_VERSION: &str = "1.0.2";

/// A container's `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// Spec version the bundle was written for.
    pub oci_version: String,
    /// What to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// The container's root filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Root>,
    /// Hostname inside the container's UTS namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Mounts made inside the root, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Linux-specific configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux: Option<Linux>,
    /// Free-form metadata; Hafen's policy lives under `org.hafen.*`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The container's main process.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// Whether a pseudo-terminal is attached.
    #[serde(default)]
    pub terminal: bool,
    /// The user the process runs as.
    #[serde(default)]
    pub user: User,
    /// argv; `args[0]` is resolved against `PATH` from `env` when it has no slash.
    #[serde(default)]
    pub args: Vec<String>,
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (absolute).
    #[serde(default = "root_dir")]
    pub cwd: String,
    /// Set the no_new_privs bit before exec.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
}

fn root_dir() -> String {
    "/".to_owned()
}

/// Numeric user and groups.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Primary group id.
    #[serde(default)]
    pub gid: u32,
    /// Supplementary group ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
}

/// Where the root filesystem is, relative to the bundle or absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// Path of the root filesystem.
    pub path: String,
    /// Mount the root read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
}

/// One mount inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the container.
    pub destination: String,
    /// Filesystem type (`proc`, `tmpfs`, `bind`, ...).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Device, directory or pseudo-source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// mount(8)-style options: flags such as `nosuid`, `ro`, `bind`, and data such as `mode=755`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Linux-specific configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    /// Namespaces to create or join.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// Paths made unreadable inside the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_paths: Vec<String>,
    /// Paths remounted read-only inside the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readonly_paths: Vec<String>,
}

/// A namespace to create (no `path`) or join (`path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// `pid`, `mount`, `uts`, `ipc`, `network`, `cgroup` or `user`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Path of a namespace to join instead of creating one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Spec {
    /// An annotation's value, if present.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_runc_spec_style_config_and_ignores_unknown_fields() {
        let json = r#"{
            "ociVersion": "1.0.2-dev",
            "process": {"terminal": true, "user": {"uid": 0, "gid": 0},
                        "args": ["sh"], "env": ["PATH=/bin"], "cwd": "/",
                        "capabilities": {"bounding": ["CAP_KILL"]}, "noNewPrivileges": true},
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "runc",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}],
                      "maskedPaths": ["/proc/kcore"], "resources": {}}
        }"#;
        let spec: Spec = serde_json::from_str(json).expect("parses");
        let process = spec.process.expect("process");
        assert!(process.terminal && process.no_new_privileges);
        assert_eq!(process.args, ["sh"]);
        assert!(spec.root.expect("root").readonly);
        let linux = spec.linux.expect("linux");
        assert_eq!(linux.namespaces[1].path.as_deref(), Some("/proc/1/ns/net"));
        assert_eq!(linux.masked_paths, ["/proc/kcore"]);
    }

    #[test]
    fn writes_spec_field_names() {
        let spec = Spec {
            oci_version: OCI_VERSION.into(),
            process: Some(Process {
                user: User {
                    additional_gids: vec![10],
                    ..User::default()
                },
                ..Process::default()
            }),
            root: None,
            hostname: None,
            mounts: vec![Mount {
                destination: "/proc".into(),
                kind: Some("proc".into()),
                source: Some("proc".into()),
                options: vec![],
            }],
            linux: None,
            annotations: BTreeMap::new(),
        };
        let json = serde_json::to_string(&spec).expect("serializes");
        assert!(json.contains(r#""ociVersion":"1.0.2""#), "{json}");
        assert!(json.contains(r#""additionalGids":[10]"#), "{json}");
        assert!(json.contains(r#""type":"proc""#), "{json}");
    }
}
