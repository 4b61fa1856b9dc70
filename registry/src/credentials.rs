//! Registry credentials: the auth files docker and podman users already
//! have, and hafen's own (what `hafen login` writes).
//!
//! Every file is in the containers-auth.json format docker's config.json
//! shares: `{"auths": {"KEY": {"auth": base64("user:password")}}}`, where KEY
//! is a registry (`ghcr.io`, `localhost:5000`), a registry and namespace
//! (`ghcr.io/org`, the longest match wins) or, in docker's file, a URL
//! (`https://index.docker.io/v1/` for Docker Hub).

use std::fmt;
use std::fs;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::reference::DEFAULT_REGISTRY;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credential {
    /// The value of a Basic `Authorization` header, and of an auth file's
    /// `auth` field: base64 of `user:password`.
    pub fn basic(&self) -> String {
        STANDARD.encode(format!("{}:{}", self.username, self.password))
    }

    fn from_auth_field(value: &str) -> Option<Credential> {
        let decoded = STANDARD.decode(value.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (username, password) = text.split_once(':')?;
        Some(Credential {
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }
}

/// Reading or writing an auth file failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file exists but cannot be read.
    #[error("cannot read credentials file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not JSON of the expected shape.
    #[error("credentials file {} is not valid JSON; fix or remove it", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The file is JSON but not an object with an `auths` object.
    #[error("credentials file {} has no \"auths\" object; fix or remove it", path.display())]
    Shape {
        /// The file.
        path: PathBuf,
    },
    /// Writing hafen's file failed.
    #[error("cannot write credentials file {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No home or config directory to keep hafen's file in.
    #[error("neither XDG_CONFIG_HOME nor HOME is set: no place for hafen's credentials file")]
    NoConfigDir,
    /// Reading a password from the terminal or stdin failed.
    #[error("cannot read the {what}")]
    Prompt {
        /// `password` or `user name`.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The auth files credentials are read from, in order, and the one
/// `hafen login` writes.
#[derive(Debug, Clone, Default)]
pub struct AuthFiles {
    /// Read in this order; the first file holding the registry wins.
    pub read: Vec<PathBuf>,
    /// hafen's own file (`$XDG_CONFIG_HOME/hafen/auth.json`), where
    /// `hafen login` stores credentials and `hafen logout` removes them.
    pub own: Option<PathBuf>,
}

impl AuthFiles {
    /// The files of this user's environment: `$REGISTRY_AUTH_FILE`,
    /// hafen's own, podman's (`$XDG_RUNTIME_DIR/containers/auth.json`, then
    /// `$XDG_CONFIG_HOME/containers/auth.json`), docker's
    /// (`~/.docker/config.json` or `$DOCKER_CONFIG/config.json`).
    pub fn from_env() -> AuthFiles {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let own = config_dir().map(|dir| dir.join("hafen/auth.json"));
        let mut read = Vec::new();
        if let Some(file) = var("REGISTRY_AUTH_FILE") {
            read.push(PathBuf::from(file));
        }
        read.extend(own.clone());
        if let Some(dir) = var("XDG_RUNTIME_DIR") {
            read.push(PathBuf::from(dir).join("containers/auth.json"));
        }
        if let Some(dir) = config_dir() {
            read.push(dir.join("containers/auth.json"));
        }
        if let Some(dir) = var("DOCKER_CONFIG") {
            read.push(PathBuf::from(dir).join("config.json"));
        } else if let Some(home) = var("HOME") {
            read.push(PathBuf::from(home).join(".docker/config.json"));
        }
        AuthFiles { read, own }
    }

    /// No files at all: anonymous access only.
    pub fn none() -> AuthFiles {
        AuthFiles::default()
    }

    /// The credential for `repository` in `registry` (a registry as in
    /// [`crate::Reference::registry`]), from the first file that has one.
    /// A missing file is skipped; an unreadable or malformed one is an error.
    pub fn lookup(
        &self,
        registry: &str,
        repository: Option<&str>,
    ) -> Result<Option<Credential>, CredentialsError> {
        for path in &self.read {
            let Some(auths) = read_auths(path)? else {
                continue;
            };
            if let Some(found) = find(&auths, registry, repository) {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The files other than hafen's own that hold credentials for
    /// `registry` (for `hafen logout` to mention).
    pub fn others_holding(&self, registry: &str) -> Vec<PathBuf> {
        self.read
            .iter()
            .filter(|path| Some(*path) != self.own.as_ref())
            .filter(|path| {
                matches!(read_auths(path), Ok(Some(auths)) if find(&auths, registry, None).is_some())
            })
            .cloned()
            .collect()
    }

    /// Stores `credential` for `registry` in hafen's own file (mode 0600,
    /// written to a temporary file and renamed), keeping every other entry.
    pub fn store(&self, registry: &str, credential: &Credential) -> Result<(), CredentialsError> {
        let path = self.own.as_ref().ok_or(CredentialsError::NoConfigDir)?;
        let mut root = read_root(path)?.unwrap_or_default();
        let auths = auths_object(&mut root, path)?;
        let key = normalize_key(registry);
        auths.retain(|k, _| normalize_key(k) != key);
        let mut entry = Map::new();
        entry.insert("auth".into(), Value::String(credential.basic()));
        auths.insert(key, Value::Object(entry));
        write_root(path, &root)
    }

    /// Removes `registry` from hafen's own file: whether it was there.
    pub fn remove(&self, registry: &str) -> Result<bool, CredentialsError> {
        let path = self.own.as_ref().ok_or(CredentialsError::NoConfigDir)?;
        let Some(mut root) = read_root(path)? else {
            return Ok(false);
        };
        let auths = auths_object(&mut root, path)?;
        let key = normalize_key(registry);
        let before = auths.len();
        auths.retain(|k, _| normalize_key(k) != key);
        if auths.len() == before {
            return Ok(false);
        }
        write_root(path, &root)?;
        Ok(true)
    }
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
pub(crate) fn config_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".config")))
}

/// A registry as given on a command line or as an auth file key, in the
/// form references use: `https://index.docker.io/v1/` → `docker.io`,
/// `https://ghcr.io` → `ghcr.io`; a namespace path is kept
/// (`ghcr.io/org`).
pub fn normalize_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.trim_end_matches('/');
    let key = key
        .strip_suffix("/v1")
        .or_else(|| key.strip_suffix("/v2"))
        .unwrap_or(key);
    let (host, path) = match key.split_once('/') {
        Some((host, path)) => (host, Some(path)),
        None => (key, None),
    };
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DEFAULT_REGISTRY,
        other => other,
    };
    match path {
        Some(path) => format!("{host}/{path}"),
        None => host.to_owned(),
    }
}

/// The most specific entry of `auths` for `registry`/`repository`.
fn find(
    auths: &Map<String, Value>,
    registry: &str,
    repository: Option<&str>,
) -> Option<Credential> {
    let full = repository.map(|repo| format!("{registry}/{repo}"));
    let mut best: Option<(usize, Credential)> = None;
    for (key, entry) in auths {
        let key = normalize_key(key);
        let matches = key == registry
            || full.as_deref().is_some_and(|full| {
                full.strip_prefix(key.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            });
        if !matches || best.as_ref().is_some_and(|(len, _)| *len >= key.len()) {
            continue;
        }
        if let Some(credential) = entry_credential(entry) {
            best = Some((key.len(), credential));
        }
    }
    best.map(|(_, credential)| credential)
}

/// An entry's credential: its `auth` field, or `username` and `password`.
fn entry_credential(entry: &Value) -> Option<Credential> {
    if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
        if !auth.is_empty() {
            return Credential::from_auth_field(auth);
        }
    }
    let username = entry.get("username").and_then(Value::as_str)?;
    let password = entry.get("password").and_then(Value::as_str)?;
    Some(Credential {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

fn read_root(path: &Path) -> Result<Option<Value>, CredentialsError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialsError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Value::Object(Map::new())));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| CredentialsError::Json {
            path: path.to_owned(),
            source,
        })
}

fn read_auths(path: &Path) -> Result<Option<Map<String, Value>>, CredentialsError> {
    let Some(root) = read_root(path)? else {
        return Ok(None);
    };
    let Value::Object(mut root) = root else {
        return Err(CredentialsError::Shape {
            path: path.to_owned(),
        });
    };
    match root.remove("auths") {
        None => Ok(Some(Map::new())),
        Some(Value::Object(auths)) => Ok(Some(auths)),
        Some(_) => Err(CredentialsError::Shape {
            path: path.to_owned(),
        }),
    }
}

fn auths_object<'a>(
    root: &'a mut Value,
    path: &Path,
) -> Result<&'a mut Map<String, Value>, CredentialsError> {
    let shape = || CredentialsError::Shape {
        path: path.to_owned(),
    };
    if root.is_null() {
        *root = Value::Object(Map::new());
    }
    let object = root.as_object_mut().ok_or_else(shape)?;
    object
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(shape)
}

/// Writes `root` to `path` through a 0600 temporary file and a rename, so a
/// reader never sees half a file and nobody else can read the secrets.
fn write_root(path: &Path, root: &Value) -> Result<(), CredentialsError> {
    let write_err = |source| CredentialsError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        // Directories made here are private; existing ones are left as
        // the user has them.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write_err)?;
    }
    let mut text = serde_json::to_vec_pretty(root).map_err(|e| write_err(io::Error::other(e)))?;
    text.push(b'\n');
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(&text)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

/// Reads a line from stdin, without its line ending. `what` names it in
/// errors.
pub fn read_line_from_stdin(what: &'static str) -> Result<String, CredentialsError> {
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|source| CredentialsError::Prompt { what, source })?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Asks for a secret on the terminal with echo off: `prompt` goes to
/// stderr, the answer is read from stdin (which must be a terminal).
pub fn prompt_password(prompt: &str) -> Result<String, CredentialsError> {
    use rustix::termios::{self, LocalModes, OptionalActions};

    let err = |source| CredentialsError::Prompt {
        what: "password",
        source,
    };
    eprint!("{prompt}");
    let _ = io::stderr().flush();
    let stdin = io::stdin();
    let saved = termios::tcgetattr(&stdin).map_err(|e| err(e.into()))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    termios::tcsetattr(&stdin, OptionalActions::Flush, &quiet).map_err(|e| err(e.into()))?;
    let line = read_line_from_stdin("password");
    // Echo comes back even when reading failed.
    let restored = termios::tcsetattr(&stdin, OptionalActions::Flush, &saved);
    let line = line?;
    restored.map_err(|e| err(e.into()))?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(user: &str, password: &str) -> Credential {
        Credential {
            username: user.into(),
            password: password.into(),
        }
    }

    fn write(path: &Path, text: &str) {
        fs::write(path, text).expect("write test file");
    }

    #[test]
    fn keys_are_normalized_to_reference_registries() {
        assert_eq!(normalize_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize_key("index.docker.io"), "docker.io");
        assert_eq!(normalize_key("registry-1.docker.io"), "docker.io");
        assert_eq!(normalize_key("https://ghcr.io"), "ghcr.io");
        assert_eq!(normalize_key("localhost:5000"), "localhost:5000");
        assert_eq!(normalize_key("ghcr.io/org/"), "ghcr.io/org");
        assert_eq!(normalize_key("http://10.0.0.1:5000/v2/"), "10.0.0.1:5000");
    }

    #[test]
    fn lookup_follows_file_order_and_docker_hub_url_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = dir.path().join("first.json");
        let docker = dir.path().join("config.json");
        write(
            &first,
            &format!(
                r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}}}}}"#,
                credential("a", "1").basic()
            ),
        );
        write(
            &docker,
            &format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{}"}},
                    "ghcr.io": {{"auth": "{}"}}}}, "credsStore": "desktop"}}"#,
                credential("hub", "p:w").basic(),
                credential("b", "2").basic()
            ),
        );
        let files = AuthFiles {
            read: vec![dir.path().join("missing.json"), first, docker],
            own: None,
        };
        assert_eq!(
            files.lookup("ghcr.io", None).expect("lookup"),
            Some(credential("a", "1"))
        );
        // A password may hold ':'; only the first one separates.
        assert_eq!(
            files
                .lookup("docker.io", Some("library/busybox"))
                .expect("lookup"),
            Some(credential("hub", "p:w"))
        );
        assert_eq!(files.lookup("quay.io", None).expect("lookup"), None);
    }

    #[test]
    fn namespace_keys_win_over_registry_keys_for_their_repositories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("auth.json");
        write(
            &file,
            &format!(
                r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}, "ghcr.io/org": {{"auth": "{}"}},
                    "ghcr.io/or": {{"auth": "{}"}}}}}}"#,
                credential("any", "1").basic(),
                credential("org", "2").basic(),
                credential("wrong-prefix", "3").basic()
            ),
        );
        let files = AuthFiles {
            read: vec![file],
            own: None,
        };
        let get = |repo| files.lookup("ghcr.io", Some(repo)).expect("lookup");
        assert_eq!(get("org/app"), Some(credential("org", "2")));
        assert_eq!(get("other/app"), Some(credential("any", "1")));
        assert_eq!(get("orga/app"), Some(credential("any", "1")));
    }

    #[test]
    fn store_writes_a_private_file_and_keeps_other_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let own = dir.path().join("hafen/auth.json");
        let files = AuthFiles {
            read: vec![own.clone()],
            own: Some(own.clone()),
        };
        files
            .store("ghcr.io", &credential("u", "secret"))
            .expect("store");
        files
            .store("localhost:5000", &credential("v", "w"))
            .expect("store");
        files
            .store("https://ghcr.io", &credential("u2", "s2"))
            .expect("store replaces");
        let mode = fs::metadata(&own).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&own).expect("read");
        let value: Value = serde_json::from_str(&text).expect("json");
        let auths = value["auths"].as_object().expect("auths");
        assert_eq!(auths.len(), 2, "{text}");
        assert_eq!(auths["ghcr.io"]["auth"], credential("u2", "s2").basic());
        assert_eq!(
            files.lookup("localhost:5000", None).expect("lookup"),
            Some(credential("v", "w"))
        );
        assert!(files.remove("ghcr.io").expect("remove"));
        assert!(!files.remove("ghcr.io").expect("second remove"));
        assert_eq!(files.lookup("ghcr.io", None).expect("lookup"), None);
        assert_eq!(
            fs::read_dir(own.parent().expect("parent"))
                .expect("list")
                .count(),
            1,
            "no temporary file left behind"
        );
    }

    #[test]
    fn malformed_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("auth.json");
        write(&file, "{not json");
        let files = AuthFiles {
            read: vec![file.clone()],
            own: Some(file.clone()),
        };
        let err = files.lookup("ghcr.io", None).expect_err("bad json");
        assert!(err.to_string().contains("auth.json"), "{err}");
        assert!(files.store("ghcr.io", &credential("a", "b")).is_err());
        assert_eq!(fs::read_to_string(&file).expect("read"), "{not json");
        write(&file, r#"{"auths": []}"#);
        assert!(matches!(
            files.lookup("ghcr.io", None),
            Err(CredentialsError::Shape { .. })
        ));
    }

    #[test]
    fn debug_output_hides_the_password() {
        let shown = format!("{:?}", credential("user", "hunter2"));
        assert!(
            shown.contains("user") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
