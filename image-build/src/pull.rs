//! Pulling images from a registry into the local store and pushing them
//! back: the registry client ([`hafen_registry`]) moves the bytes, the
//! store ([`crate::store`]) keeps them, verified, under their names.
//!
//! A pull stores the index (when the reference names one) and the chosen
//! platform's manifest, config and layers, fetching only the blobs the
//! store lacks, in parallel; the name is set only once every blob is in,
//! so an interrupted pull leaves at most unnamed blobs for `prune`. The
//! name points at the index when there is one: its digest is what the
//! registry's tag resolves to, what docker records and what `hafen.lock`
//! pins.

use hafen_registry::{
    media, BlobJob, Client, Platform, Progress, PushJob, Reference, RegistryError,
};

use crate::oci::{self, Descriptor};
use crate::store::{BlobWriter, Store, StoreError};

/// A pull or push failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The registry side.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The local store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// What the store holds for an image cannot be read as one.
    #[error("{reference}: {message}")]
    Image {
        /// The image.
        reference: String,
        /// What is wrong.
        message: String,
    },
}

/// What a pull stored.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The reference pulled (a digest reference is stored as `repo@digest`).
    pub reference: Reference,
    /// The digest the reference resolved to (the index's, if any).
    pub digest: String,
    /// Blobs fetched, and blobs the store had already.
    pub fetched: usize,
    /// Blobs the store had already.
    pub cached: usize,
}

/// Pulls `reference` for `platform` into `store`.
pub fn pull(
    client: &Client,
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    progress: &dyn Progress,
) -> Result<Pulled, TransferError> {
    let resolved = client.resolve(reference, platform)?;
    // Config and layers first: the manifests (and the name) only once
    // everything they point at is in.
    let mut wanted = vec![resolved.image.config.clone()];
    wanted.extend(resolved.image.layers.iter().cloned());
    let missing: Vec<Descriptor> = wanted
        .iter()
        .filter(|d| !store.has_blob(&d.digest))
        .cloned()
        .collect();
    let cached = wanted.len() - missing.len();
    let mut writers: Vec<BlobWriter> = missing
        .iter()
        .map(|d| store.blob_writer(&d.digest, d.size))
        .collect::<Result<_, _>>()?;
    {
        let mut jobs: Vec<BlobJob<'_>> = missing
            .iter()
            .zip(writers.iter_mut())
            .map(|(descriptor, sink)| BlobJob {
                descriptor: descriptor.clone(),
                sink,
            })
            .collect();
        client.pull_blobs(reference, &mut jobs, progress)?;
    }
    for writer in writers {
        writer.commit()?;
    }
    let manifest = &resolved.manifest;
    let stored = store.put_blob(&manifest.media_type, &manifest.bytes)?;
    let top = match &resolved.index {
        Some(index) => store.put_blob(&index.media_type, &index.bytes)?,
        None => stored,
    };
    if top.digest != resolved.digest() {
        return Err(TransferError::Image {
            reference: reference.to_string(),
            message: format!(
                "the stored manifest's digest {} is not the {} the registry served",
                top.digest,
                resolved.digest()
            ),
        });
    }
    // A digest reference is named `repo@digest` (its tag, if given, is
    // not moved to an old digest); a tag reference names the tag.
    let name = match &reference.digest {
        Some(_) => Reference {
            tag: None,
            ..reference.clone()
        },
        None => reference.clone(),
    };
    store.tag(&name, &top)?;
    Ok(Pulled {
        reference: reference.clone(),
        digest: top.digest,
        fetched: missing.len(),
        cached,
    })
}

/// The manifests to push for a stored image, children first: the image
/// manifest, or for an index each child the store holds (others were never
/// pulled and are left out of the pushed index too) and then the index.
struct Plan {
    /// (media type, bytes) of each manifest, in push order.
    manifests: Vec<(String, Vec<u8>)>,
    /// Every blob the manifests reference.
    blobs: Vec<Descriptor>,
}

fn plan(store: &Store, top: &Descriptor, name: &str) -> Result<Plan, TransferError> {
    let bad = |message: String| TransferError::Image {
        reference: name.to_owned(),
        message,
    };
    let mut plan = Plan {
        manifests: Vec::new(),
        blobs: Vec::new(),
    };
    let bytes = store.read_blob(&top.digest)?;
    if media::is_index(&top.media_type) {
        let mut index: oci::Index = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("its index is not valid JSON: {e}")))?;
        let listed = index.manifests.len();
        index
            .manifests
            .retain(|child| store.has_blob(&child.digest));
        if index.manifests.is_empty() {
            return Err(bad("the store holds none of its index's manifests".into()));
        }
        for child in &index.manifests {
            add_image(store, child, &mut plan, name)?;
        }
        // The index as stored, unless children were left out.
        let bytes = if index.manifests.len() == listed {
            bytes
        } else {
            serde_json::to_vec(&index).map_err(|e| bad(e.to_string()))?
        };
        plan.manifests.push((top.media_type.clone(), bytes));
    } else {
        add_image(store, top, &mut plan, name)?;
    }
    Ok(plan)
}

fn add_image(
    store: &Store,
    manifest: &Descriptor,
    plan: &mut Plan,
    name: &str,
) -> Result<(), TransferError> {
    let bytes = store.read_blob(&manifest.digest)?;
    let image: oci::ImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| TransferError::Image {
            reference: name.to_owned(),
            message: format!("manifest {} is not valid JSON: {e}", manifest.digest),
        })?;
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        if !plan.blobs.iter().any(|b| b.digest == blob.digest) {
            plan.blobs.push(blob.clone());
        }
    }
    plan.manifests.push((manifest.media_type.clone(), bytes));
    Ok(())
}

/// `target`'s repository at `digest`, without its tag.
fn by_digest(target: &Reference, digest: &str) -> Reference {
    Reference {
        tag: None,
        ..target.with_digest(digest)
    }
}

/// Pushes the stored image `top` (a manifest or index in `store`, named
/// `source` when it has a name) to `target`; returns the digest of the
/// manifest (or index) the registry now holds under `target`.
pub fn push(
    client: &Client,
    store: &Store,
    top: &Descriptor,
    source: Option<&Reference>,
    target: &Reference,
    progress: &dyn Progress,
) -> Result<String, TransferError> {
    let name = source.map_or_else(|| top.digest.clone(), Reference::familiar);
    let plan = plan(store, top, &name)?;
    let paths: Vec<std::path::PathBuf> = plan
        .blobs
        .iter()
        .map(|b| store.blob_path(&b.digest))
        .collect::<Result<_, _>>()?;
    for (blob, path) in plan.blobs.iter().zip(&paths) {
        if !path.is_file() {
            return Err(TransferError::Image {
                reference: name,
                message: format!(
                    "blob {} is missing from the local store: pull the image again",
                    blob.digest
                ),
            });
        }
    }
    // The repository it came from, when it is on the same registry: the
    // registry may mount the blobs instead of taking them again.
    let mount_from = source
        .filter(|s| s.registry == target.registry && s.repository != target.repository)
        .cloned();
    let jobs: Vec<PushJob<'_>> = plan
        .blobs
        .iter()
        .zip(&paths)
        .map(|(blob, path)| PushJob {
            descriptor: blob.clone(),
            source: path,
            mount_from: mount_from.clone(),
        })
        .collect();
    client.push_blobs(target, &jobs, progress)?;
    let mut digest = String::new();
    let last = plan.manifests.len() - 1;
    for (i, (media_type, bytes)) in plan.manifests.iter().enumerate() {
        // Children by digest, the last (the top) under the target's name.
        let at = if i == last {
            target.clone()
        } else {
            by_digest(target, &oci::digest_of(bytes))
        };
        digest = client.push_manifest(&at, media_type, bytes)?;
    }
    Ok(digest)
}
