//! `hafen image ls|rm|tag|inspect|history|save|load|prune`: the verbs
//! over the local image store. Each prints its own output and returns the
//! command's exit code; `src/main.rs` only parses arguments.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use hafen_registry::{Reference, ReferenceError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::archive::{self, ArchiveError, SaveFormat, SaveItem};
use crate::oci::{self, Descriptor, OciError};
use crate::store::{Store, StoreError, StoredImage};

/// A verb failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An archive could not be read or written.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// An image in the store is unusable.
    #[error(transparent)]
    Oci(#[from] OciError),
    /// A name is not an image reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Writing the output failed.
    #[error("cannot write the output")]
    Output(#[source] io::Error),
    /// The arguments cannot be used together.
    #[error("{0}")]
    Invalid(String),
}

impl CliError {
    /// Whether the reader of our output went away (`hafen image ls | head`).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

fn out(text: &str) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(CliError::Output)
}

/// What an image config says about its origin (the parts the listing
/// verbs show).
#[derive(Debug, Default, Deserialize)]
struct ConfigMeta {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    history: Vec<HistoryEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct HistoryEntry {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    created_by: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    empty_layer: bool,
}

/// One store entry read whole: what the listing verbs need.
#[derive(Debug)]
struct Entry {
    stored: StoredImage,
    image: Result<oci::Image, OciError>,
    config_raw: Option<Vec<u8>>,
    /// The size of the linux/amd64 manifest below an index (0 without one).
    platform_manifest_size: u64,
}

impl Entry {
    fn read(store: &Store, layout: &oci::Layout, stored: StoredImage) -> Entry {
        let image = layout.resolve_descriptor(stored.descriptor.clone());
        let config_raw = image
            .as_ref()
            .ok()
            .and_then(|i| store.read_blob(&i.manifest.config.digest).ok());
        let platform_manifest_size = match &image {
            Ok(i) if i.digest != stored.descriptor.digest => store
                .blob_path(&i.digest)
                .ok()
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or(0, |m| m.len()),
            _ => 0,
        };
        Entry {
            stored,
            image,
            config_raw,
            platform_manifest_size,
        }
    }

    /// Docker's image id: the config's digest (the manifest's when unreadable).
    fn id(&self) -> String {
        match &self.image {
            Ok(image) => image.manifest.config.digest.clone(),
            Err(_) => self.stored.descriptor.digest.clone(),
        }
    }

    fn meta(&self) -> ConfigMeta {
        self.config_raw
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }

    /// Bytes the image takes in the store: its index, manifest, config
    /// and layers (compressed, as stored).
    fn size(&self) -> u64 {
        let top = self.stored.descriptor.size;
        match &self.image {
            Ok(image) => {
                top + self.platform_manifest_size
                    + image.manifest.config.size
                    + image.manifest.layers.iter().map(|l| l.size).sum::<u64>()
            }
            Err(_) => top,
        }
    }

    /// REPOSITORY and TAG as docker shows them.
    fn repo_and_tag(&self) -> (String, String) {
        match (&self.stored.name, self.stored.reference()) {
            (_, Some(r)) => {
                let repo = Reference {
                    tag: None,
                    digest: None,
                    ..r.clone()
                }
                .familiar();
                (repo, r.tag.clone().unwrap_or_else(|| "<none>".into()))
            }
            (Some(raw), None) => (raw.clone(), "<none>".into()),
            (None, None) => ("<none>".into(), "<none>".into()),
        }
    }
}

fn short_id(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.chars().take(12).collect()
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds of an RFC 3339 time (`2024-05-01T12:00:00.5Z`, `…+02:00`).
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset)
}

/// How long ago, in docker's words ("3 days ago", "About an hour ago").
pub fn ago(seconds: i64) -> String {
    let s = seconds.max(0);
    let text = match s {
        0 => "Less than a second".to_owned(),
        1 => "1 second".to_owned(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".to_owned(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".to_owned(),
        7200..=172_799 => format!("{} hours", s / 3600),
        172_800..=1_209_599 => format!("{} days", s / 86_400),
        1_209_600..=5_183_999 => format!("{} weeks", s / 604_800),
        5_184_000..=63_071_999 => format!("{} months", s / 2_592_000),
        _ => format!("{} years", s / 31_536_000),
    };
    format!("{text} ago")
}

fn created_text(created: Option<&str>, now: i64) -> String {
    created
        .and_then(parse_rfc3339)
        .map_or_else(|| "N/A".to_owned(), |t| ago(now - t))
}

/// A size with three significant digits in decimal units, as docker prints it.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let text = if value >= 100.0 || unit == 0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    };
    format!("{text}{}", UNITS[unit])
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            l.push_str(cell);
            if i < last {
                l.push_str(&" ".repeat(w - cell.chars().count() + 3));
            }
        }
        text.push_str(l.trim_end());
        text.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    text
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `hafen image ls`.
pub fn ls(store: &Store, json_output: bool) -> Result<i32, CliError> {
    let layout = store.layout("local store")?;
    let entries: Vec<Entry> = store
        .images()?
        .into_iter()
        .map(|s| Entry::read(store, &layout, s))
        .collect();
    let now = now_unix();
    if json_output {
        let list: Vec<Value> = entries
            .iter()
            .map(|e| {
                let (repository, tag) = e.repo_and_tag();
                json!({
                    "repository": repository,
                    "tag": tag,
                    "name": e.stored.name,
                    "digest": e.stored.descriptor.digest,
                    "id": e.id(),
                    "created": e.meta().created,
                    "size": e.size(),
                })
            })
            .collect();
        out(&format!("{}\n", Value::Array(list)))?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let (repository, tag) = e.repo_and_tag();
            vec![
                repository,
                tag,
                short_id(&e.id()),
                created_text(e.meta().created.as_deref(), now),
                human_size(e.size()),
            ]
        })
        .collect();
    out(&table(
        &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
        &rows,
    ))?;
    Ok(0)
}

/// What a name or id given on the command line matches.
#[derive(Debug, Clone)]
pub struct Found {
    /// The store's names (full references) the argument matched: one for
    /// a name, every name of the image for an id.
    pub names: Vec<String>,
    /// The image's manifest or index.
    pub descriptor: Descriptor,
    /// Whether it was given as a name (not an id).
    pub by_name: bool,
}

/// Finds an image by name (`busybox:1.36`, `app@sha256:…`) or by a prefix
/// of its id (the config digest) or manifest digest, as docker does.
pub fn find(store: &Store, text: &str) -> Result<Found, CliError> {
    if let Ok(reference) = text.parse::<Reference>() {
        match store.find(&reference) {
            Ok(descriptor) => {
                let names = store
                    .images()?
                    .into_iter()
                    .filter(|i| {
                        i.descriptor.digest == descriptor.digest
                            && match &reference.digest {
                                Some(_) => {
                                    i.reference().is_some_and(|r| r.name() == reference.name())
                                }
                                None => i.name.as_deref() == Some(reference.to_string().as_str()),
                            }
                    })
                    .filter_map(|i| i.name)
                    .collect();
                return Ok(Found {
                    names,
                    descriptor,
                    by_name: true,
                });
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    let is_id = hex.len() >= 4
        && hex.len() <= 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if is_id {
        let layout = store.layout("local store")?;
        let mut matched: BTreeMap<String, Found> = BTreeMap::new();
        for stored in store.images()? {
            let entry = Entry::read(store, &layout, stored);
            let digest = &entry.stored.descriptor.digest;
            let hit = short_hex(digest).starts_with(hex) || short_hex(&entry.id()).starts_with(hex);
            if hit {
                let found = matched.entry(digest.clone()).or_insert_with(|| Found {
                    names: Vec::new(),
                    descriptor: entry.stored.descriptor.clone(),
                    by_name: false,
                });
                found.names.extend(entry.stored.name.clone());
            }
        }
        let count = matched.len();
        if let (1, Some(found)) = (count, matched.into_values().next()) {
            return Ok(found);
        }
        if count > 1 {
            return Err(StoreError::Ambiguous {
                name: text.to_owned(),
                count,
            }
            .into());
        }
    }
    Err(StoreError::NoSuchImage {
        name: text.to_owned(),
    }
    .into())
}

fn short_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn familiar_or_raw(name: &str) -> String {
    name.parse::<Reference>()
        .map_or_else(|_| name.to_owned(), |r| r.familiar())
}

/// `hafen image tag SRC DEST`.
pub fn tag(store: &Store, source: &str, target: &str) -> Result<i32, CliError> {
    let found = find(store, source)?;
    let target: Reference = target.parse()?;
    if target.digest.is_some() {
        return Err(CliError::Invalid(format!(
            "{}: a tag cannot name a digest; give NAME[:TAG]",
            target.familiar()
        )));
    }
    store.tag(&target, &found.descriptor)?;
    Ok(0)
}

/// `hafen image rm REF...`: removes names; the blobs go at prune. An id
/// removes every name of its image, which must then all be in one
/// repository unless `force`.
pub fn rm(store: &Store, refs: &[String], force: bool) -> Result<i32, CliError> {
    let mut code = 0;
    for text in refs {
        match rm_one(store, text, force) {
            Ok(lines) => out(&lines)?,
            Err(e) => {
                eprintln!("hafen: error: {}", crate::error_chain(&e));
                code = 1;
            }
        }
    }
    Ok(code)
}

fn rm_one(store: &Store, text: &str, force: bool) -> Result<String, CliError> {
    let found = find(store, text)?;
    if !found.by_name && !force {
        let repos: std::collections::BTreeSet<String> = found
            .names
            .iter()
            .filter_map(|n| n.parse::<Reference>().ok())
            .map(|r| r.name())
            .collect();
        if repos.len() > 1 {
            return Err(CliError::Invalid(format!(
                "image {text} is named in {} repositories ({}): remove it by name, or with --force",
                repos.len(),
                found
                    .names
                    .iter()
                    .map(|n| familiar_or_raw(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut lines = String::new();
    for name in &found.names {
        if store.untag(name)?.is_some() {
            lines.push_str(&format!("Untagged: {}\n", familiar_or_raw(name)));
        }
    }
    if !found.by_name && store.remove_unnamed(&found.descriptor.digest)? {
        lines.push_str(&format!("Deleted: {}\n", found.descriptor.digest));
    }
    Ok(lines)
}

/// `hafen image inspect REF...`: a JSON array, one object per image.
pub fn inspect(store: &Store, refs: &[String]) -> Result<i32, CliError> {
    let layout = store.layout("local store")?;
    let all = store.images()?;
    let mut list = Vec::new();
    for text in refs {
        let found = find(store, text)?;
        let stored = StoredImage {
            name: found.names.first().cloned(),
            descriptor: found.descriptor.clone(),
        };
        let entry = Entry::read(store, &layout, stored);
        let image = entry
            .image
            .as_ref()
            .map_err(|e| CliError::Invalid(crate::error_chain(e)))?;
        let config: Value = entry
            .config_raw
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(Value::Null);
        let names: Vec<String> = all
            .iter()
            .filter(|i| i.descriptor.digest == found.descriptor.digest)
            .filter_map(|i| i.name.clone())
            .collect();
        list.push(json!({
            "names": names,
            "digest": found.descriptor.digest,
            "media_type": found.descriptor.media_type,
            "manifest_digest": image.digest,
            "id": image.manifest.config.digest,
            "created": config.get("created"),
            "platform": {
                "os": config.get("os"),
                "architecture": config.get("architecture"),
            },
            "size": entry.size(),
            "config": config.get("config"),
            "diff_ids": image.config.rootfs.diff_ids,
            "layers": image.manifest.layers.iter().map(|l| json!({
                "digest": l.digest,
                "size": l.size,
                "media_type": l.media_type,
            })).collect::<Vec<_>>(),
        }));
    }
    let text = serde_json::to_string_pretty(&Value::Array(list))
        .map_err(|e| CliError::Output(e.into()))?;
    out(&format!("{text}\n"))?;
    Ok(0)
}

/// `hafen image history REF`: the config's history, newest first, each
/// step that made a layer with that layer's size in the store.
pub fn history(
    store: &Store,
    text: &str,
    no_trunc: bool,
    json_output: bool,
) -> Result<i32, CliError> {
    let layout = store.layout("local store")?;
    let found = find(store, text)?;
    let entry = Entry::read(
        store,
        &layout,
        StoredImage {
            name: None,
            descriptor: found.descriptor,
        },
    );
    let image = entry
        .image
        .as_ref()
        .map_err(|e| CliError::Invalid(crate::error_chain(e)))?;
    let meta = entry.meta();
    let mut steps = meta.history;
    if steps.is_empty() {
        // No history recorded (`hafen image import`): one step per layer.
        steps = image
            .manifest
            .layers
            .iter()
            .map(|_| HistoryEntry {
                created: meta.created.clone(),
                ..HistoryEntry::default()
            })
            .collect();
    }
    let mut layers = image.manifest.layers.iter();
    let mut rows: Vec<(Option<String>, String, u64, String)> = steps
        .iter()
        .map(|step| {
            let size = if step.empty_layer {
                0
            } else {
                layers.next().map_or(0, |l| l.size)
            };
            (
                step.created.clone(),
                step.created_by.clone().unwrap_or_default(),
                size,
                step.comment.clone().unwrap_or_default(),
            )
        })
        .collect();
    rows.reverse();
    let id = entry.id();
    let now = now_unix();
    if json_output {
        let list: Vec<Value> = rows
            .iter()
            .enumerate()
            .map(|(i, (created, by, size, comment))| {
                json!({
                    "id": if i == 0 { Some(id.clone()) } else { None },
                    "created": created,
                    "created_by": by,
                    "size": size,
                    "comment": comment,
                })
            })
            .collect();
        out(&format!("{}\n", Value::Array(list)))?;
        return Ok(0);
    }
    let cells: Vec<Vec<String>> = rows
        .into_iter()
        .enumerate()
        .map(|(i, (created, by, size, comment))| {
            let by = by.replace('\t', " ");
            let by = if !no_trunc && by.chars().count() > 45 {
                format!("{}…", by.chars().take(44).collect::<String>())
            } else {
                by
            };
            vec![
                if i == 0 {
                    if no_trunc {
                        id.clone()
                    } else {
                        short_id(&id)
                    }
                } else {
                    "<missing>".to_owned()
                },
                created_text(created.as_deref(), now),
                by,
                human_size(size),
                comment,
            ]
        })
        .collect();
    out(&table(
        &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        &cells,
    ))?;
    Ok(0)
}

/// `hafen image save REF... -o FILE`.
pub fn save(
    store: &Store,
    refs: &[String],
    output: &Path,
    format: SaveFormat,
) -> Result<i32, CliError> {
    let mut items = Vec::new();
    for text in refs {
        let found = find(store, text)?;
        let name = if found.by_name {
            found
                .names
                .first()
                .and_then(|n| n.parse::<Reference>().ok())
        } else {
            None
        };
        items.push(SaveItem {
            name,
            descriptor: found.descriptor,
        });
    }
    archive::save(store, &items, output, format)?;
    Ok(0)
}

/// `hafen image load [-i FILE]` (standard input without `-i`).
pub fn load(store: &Store, input: &Path) -> Result<i32, CliError> {
    use std::io::IsTerminal;
    if input == Path::new(archive::STDIN) && io::stdin().is_terminal() {
        return Err(CliError::Invalid(
            "no archive: give -i FILE, or pipe one in (docker save IMAGE | hafen image load)"
                .into(),
        ));
    }
    let loaded = archive::load(store, input)?;
    let mut text = String::new();
    for image in &loaded {
        if image.names.is_empty() {
            text.push_str(&format!(
                "Loaded image ID: {}\n",
                image
                    .config_digest
                    .as_deref()
                    .unwrap_or(&image.descriptor.digest)
            ));
        }
        for name in &image.names {
            text.push_str(&format!("Loaded image: {}\n", name.familiar()));
        }
    }
    out(&text)?;
    Ok(0)
}

/// `hafen image prune`.
pub fn prune(store: &mut Store) -> Result<i32, CliError> {
    let report = store.prune()?;
    let mut text = String::new();
    for digest in &report.untagged {
        text.push_str(&format!("Deleted: {digest}\n"));
    }
    text.push_str(&format!(
        "Removed {} blob{} and {} stale temporary file{}\nTotal reclaimed space: {}\n",
        report.blobs,
        if report.blobs == 1 { "" } else { "s" },
        report.temp_files,
        if report.temp_files == 1 { "" } else { "s" },
        human_size(report.bytes)
    ));
    out(&text)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_with_fractions_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00.123456789Z"),
            Some(1_709_208_000)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T14:00:00+02:00"),
            Some(1_709_208_000)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T11:30:00-00:30"),
            Some(1_709_208_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
    }

    #[test]
    fn ages_and_sizes_read_as_docker_prints_them() {
        assert_eq!(ago(0), "Less than a second ago");
        assert_eq!(ago(90), "About a minute ago");
        assert_eq!(ago(3 * 3600), "3 hours ago");
        assert_eq!(ago(3 * 86_400), "3 days ago");
        assert_eq!(ago(3 * 604_800), "3 weeks ago");
        assert_eq!(ago(400 * 86_400), "13 months ago");
        assert_eq!(ago(800 * 86_400), "2 years ago");
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_261_000), "4.26MB");
        assert_eq!(human_size(12_300_000), "12.3MB");
        assert_eq!(human_size(1_000_000), "1MB");
        assert_eq!(human_size(123_456_789_000), "123GB");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "BB"],
            &[vec!["long".into(), "x".into()], vec!["s".into(), "".into()]],
        );
        assert_eq!(t, "A      BB\nlong   x\ns\n");
    }
}
