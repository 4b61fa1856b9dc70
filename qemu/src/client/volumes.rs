//! `hafen volume ls VM` and `hafen volume inspect VM NAME`: a VM's volumes
//! as its PID 1 sees them (where they live, what they use, who mounts them).

use std::io::Write;

use hafen_proto::control::{Body, VolumeInfo};
use serde_json::{json, Value};

use super::format;
use super::{out, Client, Error};

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
