//! `hafen volume ls|inspect|export|import`: a VM's volumes as its PID 1
//! sees them (where they live, what they use, who mounts them), and their
//! content as tar archives.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use hafen_proto::control::{Body, CopyDirection, VolumeInfo};
use serde_json::{json, Value};

use super::format;
use super::terminal;
use super::{out, Client, Error, SessionEnd};

fn volumes(client: &mut Client) -> Result<Vec<VolumeInfo>, Error> {
    match client.request(Body::GetVolumes)? {
        Body::Volumes(list) => Ok(list),
        other => Err(client.unexpected("GetVolumes", &other)),
    }
}

fn driver(v: &VolumeInfo) -> &'static str {
    match (v.host_dir, v.readonly) {
        (true, true) => "host (ro)",
        (true, false) => "host",
        (false, _) => "disk",
    }
}

fn size(v: &VolumeInfo) -> String {
    match v.used_bytes {
        None => "-".to_owned(),
        Some(b) if v.used_partial => format!(">{}", format::binary_size(b)),
        Some(b) => format::binary_size(b),
    }
}

/// The `hafen volume ls` table.
pub fn volume_table(list: &[VolumeInfo]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                driver(v).to_owned(),
                size(v),
                if v.containers.is_empty() {
                    "-".to_owned()
                } else {
                    v.containers.join(",")
                },
            ]
        })
        .collect();
    format::table(&["VOLUME", "DRIVER", "SIZE", "CONTAINERS"], &rows)
}

/// One volume as `hafen volume inspect` prints it.
pub fn volume_json(v: &VolumeInfo) -> Value {
    json!({
        "name": v.name,
        "driver": if v.host_dir { "host" } else { "disk" },
        "readonly": v.readonly,
        "mountpoint": format!("{}/{}", hafen_proto::layout::VOLUMES_DIR, v.name),
        "used_bytes": v.used_bytes,
        "used_bytes_is_lower_bound": v.used_partial,
        "containers": v.containers,
    })
}

/// `hafen volume ls VM`. Returns the exit code.
pub fn ls(vm: &str) -> Result<i32, Error> {
    let mut client = Client::connect(vm)?;
    let list = volumes(&mut client)?;
    out(write!(std::io::stdout().lock(), "{}", volume_table(&list)))?;
    Ok(0)
}

/// `hafen volume inspect VM NAME`. Returns the exit code.
pub fn inspect(vm: &str, name: &str) -> Result<i32, Error> {
    let mut client = Client::connect(vm)?;
    let list = volumes(&mut client)?;
    let Some(v) = list.iter().find(|v| v.name == name) else {
        let known: Vec<&str> = list.iter().map(|v| v.name.as_str()).collect();
        eprintln!(
            "hafen: VM {vm} has no volume {name:?} (its volumes: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
        return Ok(1);
    };
    let text = serde_json::to_string_pretty(&volume_json(v)).unwrap_or_default();
    out(writeln!(std::io::stdout().lock(), "{text}"))?;
    Ok(0)
}

/// Runs one copy: the guest's archive into `sink` (export) or `input`'s
/// bytes to the guest (import); the copier's messages go to our stderr.
/// Returns the copier's exit code (128+N when signal N ended us).
fn copy(
    vm: &str,
    name: &str,
    direction: CopyDirection,
    input: Option<BorrowedFd<'_>>,
    sink: &mut dyn Write,
) -> Result<i32, Error> {
    let mut client = Client::connect(vm)?;
    client.catch_signals(&[])?;
    client
        .session(
            Body::VolumeCopy {
                volume: name.to_owned(),
                direction,
            },
            input,
            sink,
            &mut std::io::stderr(),
        )
        .map(SessionEnd::code)
}

/// `FILE`'s temporary sibling, renamed over it once complete.
fn temporary_for(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.hafen-{}", std::process::id()))
}

/// `hafen volume export VM NAME [-o FILE]`: the volume as a tar archive on
/// stdout, or in FILE, which appears only once the archive is complete.
/// Returns the exit code.
pub fn export(vm: &str, name: &str, output: Option<&Path>) -> Result<i32, Error> {
    let Some(path) = output else {
        if terminal::is_terminal(rustix::stdio::stdout()) {
            eprintln!(
                "hafen: not writing a tar archive to a terminal: redirect it (> backup.tar) or use -o FILE"
            );
            return Ok(2);
        }
        let mut stdout = std::io::stdout().lock();
        let code = copy(vm, name, CopyDirection::Export, None, &mut stdout)?;
        out(stdout.flush())?;
        return Ok(code);
    };
    let tmp = temporary_for(path);
    let mut file = match File::create(&tmp) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("hafen: cannot create {}: {e}", tmp.display());
            return Ok(1);
        }
    };
    let mut written = copy(vm, name, CopyDirection::Export, None, &mut file);
    if let Ok(0) = written {
        if let Err(e) = file.sync_all().and_then(|()| std::fs::rename(&tmp, path)) {
            eprintln!("hafen: cannot write {}: {e}", path.display());
            written = Ok(1);
        }
    }
    if !matches!(written, Ok(0)) {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `hafen volume import VM NAME [-i FILE]`: replaces the volume's content
/// with the tar archive on stdin (or in FILE). Returns the exit code.
pub fn import(vm: &str, name: &str, input: Option<&Path>) -> Result<i32, Error> {
    let file;
    let fd = match input {
        Some(path) => match File::open(path) {
            Ok(f) => {
                file = f;
                file.as_fd()
            }
            Err(e) => {
                eprintln!("hafen: cannot open {}: {e}", path.display());
                return Ok(1);
            }
        },
        None => {
            let stdin = rustix::stdio::stdin();
            if terminal::is_terminal(stdin) {
                eprintln!(
                    "hafen: the archive comes on stdin: redirect it (< backup.tar) or use -i FILE"
                );
                return Ok(2);
            }
            stdin
        }
    };
    copy(
        vm,
        name,
        CopyDirection::Import,
        Some(fd),
        &mut std::io::sink(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(name: &str, host_dir: bool, used: Option<u64>, containers: &[&str]) -> VolumeInfo {
        VolumeInfo {
            name: name.into(),
            host_dir,
            readonly: false,
            used_bytes: used,
            used_partial: false,
            containers: containers.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    #[test]
    fn the_table_shows_driver_size_and_containers() {
        let mut partial = volume("big", false, Some(3 << 30), &[]);
        partial.used_partial = true;
        let text = volume_table(&[
            volume("db", false, Some(8192), &["api", "migrate"]),
            volume("site", true, None, &["web"]),
            partial,
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("VOLUME"), "{text}");
        assert!(
            lines[1].contains("disk") && lines[1].contains("api,migrate"),
            "{text}"
        );
        assert!(
            lines[2].contains("host") && lines[2].contains(" - "),
            "{text}"
        );
        assert!(lines[3].contains(">3"), "{text}");
    }

    #[test]
    fn inspect_names_the_mountpoint_in_the_guest() {
        let v = volume_json(&volume("db", false, Some(4096), &["api"]));
        assert_eq!(v["mountpoint"], "/run/hafen/data/volumes/db");
        assert_eq!(v["driver"], "disk");
        assert_eq!(v["used_bytes"], 4096);
        assert_eq!(v["containers"][0], "api");
    }
}
