//! Turns a `hafen.toml` manifest and OCI images into a bootable image
//! directory: the kernel, a reproducible initramfs holding hafen-init, one
//! OCI runtime bundle per container and each image's flattened root, and
//! `image.json`. See docs/architecture.md for the layout.

pub mod archive;
pub mod bundle;
pub mod cpio;
pub mod dockerfile;
pub mod images_cli;
pub mod import;
pub mod lock;
pub mod manifest;
pub mod oci;
pub mod pull;
pub mod seccomp;
pub mod store;
pub mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hafen_proto::image::{ImageInfo, ImageNetwork, IMAGE_INFO_FILE};
use hafen_proto::{layout, net};
use hafen_registry::Reference;

pub use import::{import, import_into_store};
use manifest::{ArchivePick, ImageRef, ImageSource};
use store::Store;
use tree::{Kind, Tree};

/// Base files every image carries (the repository's `rootfs/`), embedded so
/// an installed `hafen` does not need the repository.
const BASE_FILES: &[(&str, &str)] = &[
    (
        "etc/os-release",
        include_str!("../../rootfs/etc/os-release"),
    ),
    ("etc/passwd", include_str!("../../rootfs/etc/passwd")),
    ("etc/group", include_str!("../../rootfs/etc/group")),
];

/// Guest memory an image asks for unless told otherwise.
pub const DEFAULT_MEMORY_MIB: u32 = 256;

/// Name of the initramfs in an image directory when it is stored as it is.
pub const INITRAMFS_RAW: &str = "initramfs.cpio";
/// Name of the initramfs in an image directory when it is LZ4-compressed.
pub const INITRAMFS_LZ4: &str = "initramfs.cpio.lz4";
/// Archives up to this size are stored uncompressed. The guest kernel then
/// only copies them; under TCG, decompressing examples/hello's 3.7 MiB
/// archive (busybox and hafen-init) started hafen-init 46 ms later (median
/// of 10 paired boots).
/// Larger ones are compressed: the guest holds the initramfs and its
/// unpacked files at once while it unpacks, and QEMU reads the file into
/// guest memory.
pub const RAW_INITRAMFS_MAX: usize = 16 << 20;

/// The initramfs file for a cpio `archive`: its name in the image directory
/// and its bytes (see [`RAW_INITRAMFS_MAX`]).
pub fn initramfs_file(archive: Vec<u8>) -> (&'static str, Vec<u8>) {
    if archive.len() <= RAW_INITRAMFS_MAX {
        (INITRAMFS_RAW, archive)
    } else {
        (INITRAMFS_LZ4, cpio::lz4_legacy(&archive))
    }
}

/// What `hafen build` was asked to do.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Path of the manifest.
    pub manifest: PathBuf,
    /// Image directory to write.
    pub out: PathBuf,
    /// Kernel directory or vmlinux file; `None` looks it up.
    pub kernel: Option<PathBuf>,
    /// Static hafen-init binary; `None` looks it up.
    pub init: Option<PathBuf>,
    /// Resolve registry images' tags again (and move `hafen.lock`'s pins)
    /// instead of using the pinned digests.
    pub pull: bool,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildSummary {
    /// The image directory.
    pub out: PathBuf,
    /// Container names, in declared order.
    pub containers: Vec<String>,
    /// Distinct images, by digest.
    pub images: Vec<String>,
    /// Size of the initramfs file (compressed when large).
    pub initramfs_bytes: u64,
    /// The images built from Dockerfiles (`build =`), in declared order.
    pub built: Vec<DockerfileBuild>,
}

/// An image `hafen build` built from a container's `build =`.
#[derive(Debug, Clone)]
pub struct DockerfileBuild {
    /// Its name in the local store ([`manifest::BuildSpec::tag`]).
    pub tag: String,
    /// Its manifest's digest: what the image directory holds.
    pub digest: String,
    /// Steps the cache answered.
    pub cached: usize,
    /// Steps executed.
    pub executed: usize,
    /// Whether a builder VM was booted (not when every RUN was cached).
    pub booted_vm: bool,
}

impl fmt::Display for DockerfileBuild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "built {} ({}): {} step{} cached, {} executed, {}",
            self.tag,
            self.digest,
            self.cached,
            if self.cached == 1 { "" } else { "s" },
            self.executed,
            if self.booted_vm {
                "in a builder VM"
            } else {
                "no VM booted"
            }
        )
    }
}

impl fmt::Display for BuildSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for built in &self.built {
            writeln!(f, "{built}")?;
        }
        write!(
            f,
            "built {}: {} container{} ({}), {} image{}, initramfs {} KiB",
            self.out.display(),
            self.containers.len(),
            if self.containers.len() == 1 { "" } else { "s" },
            self.containers.join(", "),
            self.images.len(),
            if self.images.len() == 1 { "" } else { "s" },
            self.initramfs_bytes / 1024
        )
    }
}

/// What `hafen image import` was asked to do.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Root filesystem directory or tar.
    pub rootfs: PathBuf,
    /// OCI image layout directory to create or extend.
    pub layout: PathBuf,
    /// Reference name.
    pub tag: Option<String>,
    /// Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Default command.
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// Paths the image declares as volumes (a Dockerfile's `VOLUME`).
    pub volumes: Vec<String>,
}

/// What an import produced.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// The layout directory.
    pub layout: PathBuf,
    /// The image manifest's digest.
    pub digest: String,
    /// Its tag.
    pub tag: Option<String>,
    /// Size of the compressed layer.
    pub layer_bytes: u64,
    /// Whether it went into the local image store (`layout` is its root).
    pub stored: bool,
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.stored {
            write!(f, "imported {} into the local image store", self.digest)?;
        } else {
            write!(f, "imported {} into {}", self.digest, self.layout.display())?;
        }
        if let Some(tag) = &self.tag {
            write!(f, " as {tag}")?;
        }
        write!(f, " (layer {} KiB)", self.layer_bytes / 1024)
    }
}

/// A build or import failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest is unreadable or invalid.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// An image could not be resolved or verified.
    #[error("container {container}")]
    Image {
        /// The container that uses it.
        container: String,
        /// The cause.
        #[source]
        source: Box<ImageError>,
    },
    /// A layer is corrupt or hostile.
    #[error("image {image}: layer {digest}")]
    Layer {
        /// The image reference.
        image: String,
        /// The layer's digest.
        digest: String,
        /// The cause.
        #[source]
        source: tree::LayerError,
    },
    /// A layer's media type is not supported.
    #[error("image {image}: layer {digest} has media type {media_type:?}, which is not supported (use tar, tar+gzip or tar+zstd layers)")]
    LayerType {
        /// The image reference.
        image: String,
        /// The layer's digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// A layer's uncompressed content does not match the config's diff id.
    #[error("image {image}: layer {digest} unpacks to {actual}, but the image config says {expected}; the image is corrupt")]
    DiffId {
        /// The image reference.
        image: String,
        /// The layer's digest.
        digest: String,
        /// The config's diff id.
        expected: String,
        /// What it unpacked to.
        actual: String,
    },
    /// A bundle cannot be made.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    /// No usable kernel.
    #[error("kernel: {0}")]
    Kernel(String),
    /// No usable hafen-init.
    #[error("hafen-init: {0}")]
    Init(String),
    /// An input file could not be read.
    #[error("cannot read {}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The output could not be written.
    #[error("cannot write {}", path.display())]
    Output {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing an OCI layout failed.
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    /// The local image store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// `hafen.lock` cannot be read or written.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// Building a container's image from its Dockerfile failed; the cause
    /// names the Dockerfile's line.
    #[error("container {container}: build {}", context.display())]
    Dockerfile {
        /// The container whose `build` it is.
        container: String,
        /// The build context.
        context: PathBuf,
        /// The cause.
        #[source]
        source: Box<dockerfile::cli::BuildError>,
    },
    /// Pulling a container's image failed.
    #[error("container {container}: pull {image}")]
    Pull {
        /// The container that uses it.
        container: String,
        /// The image as the manifest names it.
        image: String,
        /// The cause.
        #[source]
        source: Box<pull::TransferError>,
    },
}

/// An error and its causes on one line, `: `-separated.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The kernel cache `kernel-config/build.sh` fills.
fn kernel_cache() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HAFEN_CACHE") {
        return Some(PathBuf::from(dir).join("kernel/default"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hafen/kernel/default"))
}

/// Finds the kernel: `explicit`, `$HAFEN_KERNEL`, then the cache. Returns
/// the vmlinux and, when next to it, the bzImage.
pub fn locate_kernel(explicit: Option<&Path>) -> Result<(PathBuf, Option<PathBuf>), Error> {
    let candidate = explicit
        .map(Path::to_owned)
        .or_else(|| std::env::var_os("HAFEN_KERNEL").map(PathBuf::from))
        .or_else(kernel_cache);
    let Some(path) = candidate else {
        return Err(Error::Kernel(
            "no kernel given and no cache directory: run kernel-config/build.sh or pass --kernel"
                .into(),
        ));
    };
    if path.is_dir() {
        let vmlinux = path.join("vmlinux");
        if !vmlinux.is_file() {
            return Err(Error::Kernel(format!(
                "{} holds no vmlinux: run kernel-config/build.sh (it builds and caches the kernel) or pass --kernel",
                path.display()
            )));
        }
        let bz = path.join("bzImage");
        Ok((vmlinux, bz.is_file().then_some(bz)))
    } else if path.is_file() {
        Ok((path, None))
    } else {
        Err(Error::Kernel(format!(
            "{} does not exist: run kernel-config/build.sh or pass --kernel",
            path.display()
        )))
    }
}

/// Whether `bytes` is an ELF executable without a program interpreter (statically linked).
pub fn is_static_elf(bytes: &[u8]) -> Result<bool, String> {
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) {
        return Err("not a 64-bit ELF executable".into());
    }
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Err("truncated ELF header".into());
    };
    const PT_INTERP: u32 = 3;
    for i in 0..usize::from(phnum) {
        let at = usize::try_from(phoff).map_err(|_| "bad program header offset")?
            + i * usize::from(phentsize);
        match u32_at(at) {
            Some(PT_INTERP) => return Ok(false),
            Some(_) => {}
            None => return Err("truncated program headers".into()),
        }
    }
    Ok(true)
}

const INIT_BUILD_HINT: &str = "build it with: cargo build --release -p hafen-init --target x86_64-unknown-linux-musl (or scripts/build-init.sh)";

/// Finds the static hafen-init: `explicit`, `$HAFEN_INIT`, then next to this executable.
pub fn locate_init(explicit: Option<&Path>) -> Result<(PathBuf, Vec<u8>), Error> {
    let given = explicit
        .map(Path::to_owned)
        .or_else(|| std::env::var_os("HAFEN_INIT").map(PathBuf::from));
    let check = |path: &Path| -> Result<Vec<u8>, Error> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::Init(format!(
                "cannot read {}: {e}; {INIT_BUILD_HINT}",
                path.display()
            ))
        })?;
        match is_static_elf(&bytes) {
            Ok(true) => Ok(bytes),
            Ok(false) => Err(Error::Init(format!(
                "{} is dynamically linked; the guest has no C library; {INIT_BUILD_HINT}",
                path.display()
            ))),
            Err(e) => Err(Error::Init(format!(
                "{}: {e}; {INIT_BUILD_HINT}",
                path.display()
            ))),
        }
    };
    if let Some(path) = given {
        let bytes = check(&path)?;
        return Ok((path, bytes));
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned));
    let mut candidates = Vec::new();
    if let Some(dir) = &exe_dir {
        candidates.push(dir.join("hafen-init"));
        candidates.push(dir.join("../x86_64-unknown-linux-musl/release/hafen-init"));
        candidates.push(dir.join("../../x86_64-unknown-linux-musl/release/hafen-init"));
    }
    for c in &candidates {
        if let Ok(bytes) = check(c) {
            return Ok((c.clone(), bytes));
        }
    }
    Err(Error::Init(format!("no static hafen-init found (looked for $HAFEN_INIT and next to this program); {INIT_BUILD_HINT}")))
}

/// An image resolved, verified and flattened.
struct Resolved {
    image: oci::Image,
    tree: Tree,
    /// Where its root lives in the guest.
    guest_dir: String,
}

/// Why an image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A layout's or archive's image is unreadable, corrupt or unusable.
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    /// An archive is unreadable, hostile or not an image archive.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    /// The local store does not have it ([`store::StoreError::NotFound`])
    /// or cannot be read.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// An image opened for reading: where its blobs are, and what it is.
#[derive(Debug, Clone)]
pub struct OpenedImage {
    /// Reads its blobs, verified.
    pub layout: oci::Layout,
    /// Its manifest and config.
    pub image: oci::Image,
}

/// Opens the image a reference names. A name without a transport is
/// looked up in the local store, which is opened (into `store`) on first
/// use, so builds from layouts and archives never touch it.
pub fn open_image(r: &ImageRef, store: &mut Option<Store>) -> Result<OpenedImage, ImageError> {
    match &r.source {
        ImageSource::Oci { layout, tag } => {
            let layout = oci::Layout::open(layout, &r.text)?;
            let image = layout.resolve(tag.as_deref())?;
            Ok(OpenedImage { layout, image })
        }
        ImageSource::OciArchive { file, tag } => {
            let opened = archive::ImageArchive::open(file, &r.text)?;
            let image = opened.layout.resolve(tag.as_deref())?;
            Ok(OpenedImage {
                layout: opened.layout,
                image,
            })
        }
        ImageSource::DockerArchive { file, pick } => {
            let opened = archive::ImageArchive::open(file, &r.text)?;
            let chosen = match pick {
                None => opened.pick(None)?,
                Some(ArchivePick::Name(name)) => opened.pick(Some(name))?,
                Some(ArchivePick::Index(i)) => opened.pick_index(*i)?,
            };
            let image = opened
                .layout
                .resolve_descriptor(chosen.descriptor.clone())?;
            Ok(OpenedImage {
                layout: opened.layout,
                image,
            })
        }
        ImageSource::Registry(reference) => {
            let store = match store {
                Some(store) => store,
                None => store.insert(Store::open_default()?),
            };
            stored_image(store, reference, &r.text)
        }
        // What the spec's last build left in the store (`hafen build`
        // builds first and opens the result by digest instead).
        ImageSource::Build(spec) => {
            let store = match store {
                Some(store) => store,
                None => store.insert(Store::open_default()?),
            };
            stored_image(store, &spec.tag, &r.text)
        }
    }
}

/// The manifest or index `reference` names in the store: by name, or for
/// a digest reference (a pin), the blob of that digest even when no name
/// points at it any more (its tag moved on with a later pull; it stays
/// until `hafen image prune`).
pub fn find_in_store(
    store: &Store,
    reference: &Reference,
) -> Result<oci::Descriptor, store::StoreError> {
    let not_found = match store.find(reference) {
        Ok(descriptor) => return Ok(descriptor),
        Err(e @ store::StoreError::NotFound { .. }) => e,
        Err(e) => return Err(e),
    };
    let Some(digest) = reference.digest.as_deref().filter(|d| store.has_blob(d)) else {
        return Err(not_found);
    };
    let bytes = store.read_blob(digest)?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Kind {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let Ok(kind) = serde_json::from_slice::<Kind>(&bytes) else {
        return Err(not_found);
    };
    let media_type = kind.media_type.unwrap_or_else(|| {
        if kind.manifests.is_some() {
            oci::media::INDEX.to_owned()
        } else {
            oci::media::MANIFEST.to_owned()
        }
    });
    Ok(oci::Descriptor {
        media_type,
        digest: digest.to_owned(),
        size: bytes.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
    })
}

/// Opens a named image from the local store; [`store::StoreError::NotFound`]
/// when the store does not have it.
pub fn stored_image(
    store: &Store,
    reference: &Reference,
    text: &str,
) -> Result<OpenedImage, ImageError> {
    let descriptor = find_in_store(store, reference)?;
    let layout = store.layout(text)?;
    let image = layout.resolve_descriptor(descriptor)?;
    Ok(OpenedImage { layout, image })
}

/// A reader that hashes what passes through (a layer's diff id).
struct Hashing<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        Ok(n)
    }
}

/// Unpacks an image's layers, bottom first, into one tree: each blob is
/// streamed through its decompressor, and its digest and diff id are
/// checked (a corrupt blob is reported as such, before whatever error its
/// content caused).
pub fn flatten_image(opened: &OpenedImage) -> Result<Tree, Error> {
    let OpenedImage { layout, image } = opened;
    let name = layout.image().to_owned();
    let mut tree = Tree::new();
    let diff_ids = &image.config.rootfs.diff_ids;
    for (i, desc) in image.manifest.layers.iter().enumerate() {
        let compression =
            oci::layer_compression(&desc.media_type).ok_or_else(|| Error::LayerType {
                image: name.clone(),
                digest: desc.digest.clone(),
                media_type: desc.media_type.clone(),
            })?;
        let layer_err = |source| Error::Layer {
            image: name.clone(),
            digest: desc.digest.clone(),
            source,
        };
        let tar_err = |source| layer_err(tree::LayerError::Tar { layer: i, source });
        let mut blob = layout.open_blob(desc)?;
        let expected = diff_ids.get(i);
        let (applied, drained, actual) = {
            let decoder = compression.decoder(&mut blob).map_err(tar_err)?;
            let mut hashed = Hashing {
                inner: decoder,
                hasher: sha2::Digest::new(),
            };
            let applied = tree.apply_layer(i, &mut hashed);
            // The tar reader stops at its end marker; the diff id covers all.
            let drained = std::io::copy(&mut hashed, &mut std::io::sink());
            let hex: String = sha2::Digest::finalize(hashed.hasher)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (applied, drained, format!("sha256:{hex}"))
        };
        blob.finish()?;
        applied.map_err(layer_err)?;
        drained.map_err(tar_err)?;
        if let Some(expected) = expected {
            if &actual != expected {
                return Err(Error::DiffId {
                    image: name.clone(),
                    digest: desc.digest.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
    }
    Ok(tree)
}

/// Makes sure each registry image of `manifest` is in the local store and
/// pinned to a digest: the digest `hafen.lock` pins (from the store, pulled
/// by digest only when the store lacks it), else the image the store has
/// under that name, else a pull; with `opts.pull`, the registry is asked
/// again. Writes the lock when a pin changed. Returns the pinned
/// references by the manifest's text.
fn pin_registry_images(
    manifest: &manifest::Manifest,
    opts: &BuildOptions,
    store: &mut Option<Store>,
) -> Result<BTreeMap<String, Reference>, Error> {
    let wanted: Vec<(&str, &Reference, &str)> = manifest
        .containers
        .iter()
        .filter_map(|c| match &c.image.source {
            ImageSource::Registry(r) => Some((c.image.text.as_str(), r, c.name.as_str())),
            _ => None,
        })
        .collect();
    let mut pinned = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(pinned);
    }
    let lock_path = lock::Lock::path_for(&manifest.path);
    let mut lock = lock::Lock::load(&lock_path)?;
    let store = match store {
        Some(store) => store,
        None => store.insert(Store::open_default()?),
    };
    let mut client = None;
    let platform = hafen_registry::Platform::default();
    let progress = hafen_registry::progress::stderr_progress();
    for (text, reference, container) in wanted {
        if pinned.contains_key(text) {
            continue;
        }
        let fail = |source: pull::TransferError| Error::Pull {
            container: container.to_owned(),
            image: text.to_owned(),
            source: Box::new(source),
        };
        let from_lock = lock
            .images
            .get(text)
            .filter(|_| !opts.pull && reference.digest.is_none())
            .map(|pin| {
                pin.parse::<Reference>()
                    .map_err(|e| lock::LockError::Malformed {
                        path: lock_path.clone(),
                        message: format!("{text:?} = {pin:?}: {e}"),
                    })
            })
            .transpose()?;
        // What to look for in the store, if anything.
        let local = match (&from_lock, opts.pull) {
            (Some(pin), _) => Some(pin.clone()),
            (None, false) => Some(reference.clone()),
            (None, true) => reference.digest.is_some().then(|| reference.clone()),
        };
        let found = match &local {
            Some(r) => match find_in_store(store, r) {
                Ok(descriptor) => Some(descriptor.digest),
                Err(store::StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let digest = match found {
            Some(digest) => digest,
            None => {
                let client = client.get_or_insert_with(|| {
                    hafen_registry::Client::new(hafen_registry::ClientOptions::from_env())
                });
                let target = local.as_ref().unwrap_or(reference);
                match pull::pull(client, store, target, &platform, &*progress) {
                    Ok(pulled) => pulled.digest,
                    Err(e) => {
                        return Err(match &from_lock {
                            // Say why this digest, and how to take another.
                            Some(pin) => Error::Pull {
                                container: container.to_owned(),
                                image: format!(
                                    "{text} at {} (pinned by {}; the local store lacks it; \
                                     `hafen build --pull` takes the tag's current image)",
                                    pin.digest.as_deref().unwrap_or("?"),
                                    lock_path.display()
                                ),
                                source: Box::new(e),
                            },
                            None => fail(e),
                        });
                    }
                }
            }
        };
        let pin = reference.with_digest(&digest);
        lock.images.insert(text.to_owned(), pin.to_string());
        pinned.insert(text.to_owned(), pin);
    }
    lock.save(&lock_path)?;
    Ok(pinned)
}

fn resolve_image(
    r: &ImageRef,
    container: &str,
    store: &mut Option<Store>,
) -> Result<Resolved, Error> {
    let opened = open_image(r, store).map_err(|source| Error::Image {
        container: container.to_owned(),
        source: Box::new(source),
    })?;
    let tree = flatten_image(&opened).map_err(|e| match e {
        Error::Oci(source) => Error::Image {
            container: container.to_owned(),
            source: Box::new(source.into()),
        },
        other => other,
    })?;
    let image = opened.image;
    let hex = oci::digest_hex(&image.digest).unwrap_or("unknown");
    let guest_dir = format!("{}/sha256-{hex}", layout::IMAGES_DIR);
    Ok(Resolved {
        image,
        tree,
        guest_dir,
    })
}

/// One initramfs member before numbering.
struct Item {
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: (u32, u32),
    data: Arc<Vec<u8>>,
    /// Hard-link group, if the file has other names.
    link: Option<u32>,
}

impl Item {
    fn dir(mode: u32) -> Item {
        Item {
            mode: cpio::kind::DIR | mode,
            uid: 0,
            gid: 0,
            rdev: (0, 0),
            data: Arc::new(Vec::new()),
            link: None,
        }
    }

    fn file(mode: u32, data: Vec<u8>) -> Item {
        Item {
            mode: cpio::kind::FILE | mode,
            uid: 0,
            gid: 0,
            rdev: (0, 0),
            data: Arc::new(data),
            link: None,
        }
    }
}

/// A mount point every container has, by its path in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MountPointStub {
    path: &'static str,
    dir: bool,
}

/// Mount points an image directory gets where the image lacks them, when
/// every container using it mounts over them: its own /proc, /dev and
/// /sys, and the network files bound over /etc. Without them a
/// container's start makes them in its overlay, which first copies the
/// directory above up (the root, /etc): under TCG about 2.5 ms of the
/// first container's start for a busybox image, and writes to the upper
/// layer at every start. The stubs are never seen: each is mounted over before
/// the container runs.
const MOUNT_POINT_STUBS: [MountPointStub; 6] = [
    MountPointStub {
        path: "/proc",
        dir: true,
    },
    MountPointStub {
        path: "/dev",
        dir: true,
    },
    MountPointStub {
        path: "/sys",
        dir: true,
    },
    MountPointStub {
        path: "/etc/hosts",
        dir: false,
    },
    MountPointStub {
        path: "/etc/resolv.conf",
        dir: false,
    },
    MountPointStub {
        path: "/etc/hostname",
        dir: false,
    },
];

/// Adds `stubs` to the image directory `root` in `items` where nothing is
/// at their path, with the directories above them that are missing (as
/// the container's start would make them), owned by the container's root
/// (`owner`). A stub below something that is not a directory is left out.
fn add_mount_points(
    items: &mut BTreeMap<String, Item>,
    root: &str,
    owner: u32,
    stubs: &[MountPointStub],
) {
    let owned = |mut item: Item| {
        (item.uid, item.gid) = (owner, owner);
        item
    };
    'stubs: for stub in stubs {
        let path = format!("{root}{}", stub.path);
        if items.contains_key(&path) {
            continue;
        }
        let mut missing = Vec::new();
        let mut at = path.len();
        while let Some(slash) = path[..at].rfind('/').filter(|&i| i > root.len()) {
            let parent = &path[..slash];
            match items.get(parent) {
                Some(p) if p.mode & cpio::kind::MASK == cpio::kind::DIR => break,
                Some(_) => continue 'stubs,
                None => missing.push(parent.to_owned()),
            }
            at = slash;
        }
        for dir in missing {
            items.insert(dir, owned(Item::dir(0o755)));
        }
        let item = if stub.dir {
            Item::dir(0o755)
        } else {
            Item::file(0o644, Vec::new())
        };
        items.insert(path, owned(item));
    }
}

/// Writes the sorted items as a newc archive, hard links sharing an inode
/// with the data in the first member.
fn write_cpio(items: &BTreeMap<String, Item>) -> std::io::Result<Vec<u8>> {
    let mut nlink: BTreeMap<u32, u32> = BTreeMap::new();
    for item in items.values() {
        if let Some(group) = item.link {
            *nlink.entry(group).or_default() += 1;
        }
    }
    let mut written_groups = std::collections::BTreeSet::new();
    let mut w = cpio::Writer::new(Vec::new());
    for (path, item) in items {
        let (ino, links, data): (u32, u32, &[u8]) = match item.link {
            Some(group) if nlink.get(&group).copied().unwrap_or(1) > 1 => {
                let first = written_groups.insert(group);
                (
                    group,
                    nlink[&group],
                    if first { item.data.as_slice() } else { &[] },
                )
            }
            _ => (
                0,
                if item.mode & 0o170000 == cpio::kind::DIR {
                    2
                } else {
                    1
                },
                item.data.as_slice(),
            ),
        };
        w.entry(&cpio::Entry {
            path,
            mode: item.mode,
            uid: item.uid,
            gid: item.gid,
            nlink: links,
            rdev: item.rdev,
            data,
            ino,
        })?;
    }
    w.finish()
}

/// Builds an image directory from a manifest.
pub fn build(opts: &BuildOptions) -> Result<BuildSummary, Error> {
    let manifest = manifest::load(&opts.manifest)?;
    let (vmlinux, bzimage) = locate_kernel(opts.kernel.as_deref())?;
    let (_, init) = locate_init(opts.init.as_deref())?;

    let mut store = None;
    // Dockerfile builds come first: one may boot a builder VM, which forks
    // and needs a process without other threads (the pulls below start
    // some, and join them).
    let built = build_dockerfiles(&manifest, opts, &mut store)?;
    // Registry images: pinned by hafen.lock, pulled when the store lacks them.
    let pinned = pin_registry_images(&manifest, opts, &mut store)?;
    // Resolve each distinct image once; built and pinned ones by digest.
    let mut images: BTreeMap<ImageRef, Resolved> = BTreeMap::new();
    for c in &manifest.containers {
        if !images.contains_key(&c.image) {
            let by_digest = match &c.image.source {
                ImageSource::Build(spec) => built
                    .iter()
                    .find(|b| b.tag == c.image.text)
                    .map(|b| spec.tag.with_digest(&b.digest)),
                _ => pinned.get(&c.image.text).cloned(),
            };
            let source = match by_digest {
                Some(reference) => &ImageRef {
                    text: c.image.text.clone(),
                    source: ImageSource::Registry(reference),
                },
                None => &c.image,
            };
            let resolved = resolve_image(source, &c.name, &mut store)?;
            images.insert(c.image.clone(), resolved);
        }
    }
    // A `healthy` dependency needs a check, which may come from the image.
    let mut has_check = Vec::with_capacity(manifest.containers.len());
    for (i, c) in manifest.containers.iter().enumerate() {
        let resolved = images
            .get(&c.image)
            .ok_or_else(|| Error::Invalid(format!("container {}: image not resolved", c.name)))?;
        let check = bundle::healthcheck(c, &resolved.image.config).map_err(|e| match e {
            bundle::BundleError::Healthcheck { container, reason } => {
                Error::Manifest(manifest::ManifestError::Invalid {
                    path: manifest.path.clone(),
                    field: format!("container[{i}].healthcheck"),
                    message: format!("container {container:?}: {reason}"),
                })
            }
            other => Error::Bundle(other),
        })?;
        has_check.push(check.is_some());
    }
    manifest::check_healthy_dependencies(&manifest, &has_check)?;
    // Volumes: the manifest's, those from volumes_from, the images' own.
    let mut image_volumes = Vec::with_capacity(manifest.containers.len());
    for c in &manifest.containers {
        let resolved = images
            .get(&c.image)
            .ok_or_else(|| Error::Invalid(format!("container {}: image not resolved", c.name)))?;
        let paths: Vec<String> = resolved
            .image
            .config
            .config
            .volumes
            .iter()
            .flat_map(|v| v.keys().cloned())
            .collect();
        image_volumes.push(paths);
    }
    let mounts = manifest::resolve_mounts(&manifest, &image_volumes)?;
    let mut data_volumes: Vec<String> = mounts
        .iter()
        .flatten()
        .filter_map(|m| match &m.source {
            manifest::MountSource::Volume { name, .. } => Some(name.clone()),
            manifest::MountSource::Tmpfs { .. } => None,
        })
        .collect();
    data_volumes.sort();
    data_volumes.dedup();

    let mut items = system_items(init, &manifest.hostname, &manifest.network)?;
    let containers_dir = layout::CONTAINERS_DIR.trim_start_matches('/');
    items.insert(containers_dir.to_owned(), Item::dir(0o755));
    // Images used by user-namespaced containers also get a copy whose
    // owners are shifted into the mapped range, so container root owns them.
    let mut copies: BTreeMap<(ImageRef, u32), String> = BTreeMap::new();
    // Per image copy: the stub mount points every container using it mounts over.
    let mut stubs: BTreeMap<(ImageRef, u32), Vec<MountPointStub>> = BTreeMap::new();
    for (order, c) in manifest.containers.iter().enumerate() {
        let resolved = images
            .get(&c.image)
            .ok_or_else(|| Error::Invalid(format!("container {}: image not resolved", c.name)))?;
        let shift = if c.security.userns {
            bundle::USERNS_HOST_BASE
        } else {
            0
        };
        let lower = if shift == 0 {
            resolved.guest_dir.clone()
        } else {
            format!("{}-userns", resolved.guest_dir)
        };
        copies.insert((c.image.clone(), shift), lower.clone());
        let mut spec = bundle::spec(c, order, &resolved.image.config, &resolved.tree, &lower)?;
        bundle::add_mounts(&mut spec, mounts.get(order).map_or(&[], Vec::as_slice));
        if let Some(net) = manifest
            .network
            .containers
            .iter()
            .find(|n| n.name == c.name)
        {
            bundle::add_network(&mut spec, net);
        }
        let mounted: Vec<MountPointStub> = MOUNT_POINT_STUBS
            .iter()
            .copied()
            .filter(|stub| spec.mounts.iter().any(|m| m.destination == stub.path))
            .collect();
        stubs
            .entry((c.image.clone(), shift))
            .and_modify(|common| common.retain(|stub| mounted.contains(stub)))
            .or_insert(mounted);
        let json = serde_json::to_vec_pretty(&spec).map_err(|e| {
            Error::Invalid(format!(
                "container {}: cannot encode config.json: {e}",
                c.name
            ))
        })?;
        let dir = format!("{containers_dir}/{}", c.name);
        items.insert(dir.clone(), Item::dir(0o755));
        items.insert(format!("{dir}/config.json"), Item::file(0o644, json));
        // Compiled here so PID 1 does not at boot (about 12 ms of the first
        // container's start under TCG, and of every `hafen exec`).
        if let Some(profile) = spec.linux.as_ref().and_then(|l| l.seccomp.as_ref()) {
            let program = hafen_proto::seccomp::compile(profile)
                .map_err(|e| Error::Invalid(format!("container {}: linux.seccomp: {e}", c.name)))?;
            items.insert(
                format!("{dir}/{}", hafen_proto::seccomp::PROGRAM_FILE),
                Item::file(0o644, program.to_bytes()),
            );
        }
        items.insert(format!("{dir}/rootfs"), Item::dir(0o755));
    }

    let images_dir = layout::IMAGES_DIR.trim_start_matches('/');
    items.insert(images_dir.to_owned(), Item::dir(0o755));
    let mut next_group = 0u32;
    for ((image, shift), lower) in &copies {
        let Some(resolved) = images.get(image) else {
            continue;
        };
        let root = lower.trim_start_matches('/').to_owned();
        let mut top = Item::dir(0o755);
        (top.uid, top.gid) = (*shift, *shift);
        items.insert(root.clone(), top);
        let mut groups: BTreeMap<u64, u32> = BTreeMap::new();
        for (path, node) in &resolved.tree.nodes {
            let (kind_bits, data, rdev, link) = match &node.kind {
                Kind::Dir => (cpio::kind::DIR, Arc::new(Vec::new()), (0, 0), None),
                Kind::File { data, inode } => {
                    let group = *groups.entry(*inode).or_insert_with(|| {
                        next_group += 1;
                        next_group
                    });
                    (cpio::kind::FILE, Arc::clone(data), (0, 0), Some(group))
                }
                Kind::Symlink(target) => (
                    cpio::kind::SYMLINK,
                    Arc::new(target.clone().into_bytes()),
                    (0, 0),
                    None,
                ),
                Kind::Char(ma, mi) => (cpio::kind::CHAR, Arc::new(Vec::new()), (*ma, *mi), None),
                Kind::Block(ma, mi) => (cpio::kind::BLOCK, Arc::new(Vec::new()), (*ma, *mi), None),
                Kind::Fifo => (cpio::kind::FIFO, Arc::new(Vec::new()), (0, 0), None),
            };
            let mode = if matches!(node.kind, Kind::Symlink(_)) {
                0o777
            } else {
                node.mode
            };
            items.insert(
                format!("{root}/{path}"),
                Item {
                    mode: kind_bits | mode,
                    uid: node.uid.saturating_add(*shift),
                    gid: node.gid.saturating_add(*shift),
                    rdev,
                    data,
                    link,
                },
            );
        }
        let common = stubs.get(&(image.clone(), *shift));
        add_mount_points(&mut items, &root, *shift, common.map_or(&[], Vec::as_slice));
    }

    let archive = write_cpio(&items).map_err(|source| Error::Output {
        path: opts.out.clone(),
        source,
    })?;
    let (initrd, initramfs) = initramfs_file(archive);
    let info = ImageInfo {
        name: manifest.name.clone(),
        kernel: "vmlinux".into(),
        bzimage: bzimage.as_ref().map(|_| "bzImage".to_owned()),
        initrd: initrd.into(),
        cmdline: Vec::new(),
        memory_mib: DEFAULT_MEMORY_MIB,
        volumes: data_volumes,
        data_size: manifest.data_size,
        network: ImageNetwork {
            subnet: manifest.network.subnet,
            prefix: manifest.network.prefix,
            outbound: manifest.network.outbound,
            ports: manifest.network.published(),
        },
    };
    write_image_dir(&opts.out, &initramfs, &info, &vmlinux, bzimage.as_deref())?;

    Ok(BuildSummary {
        out: opts.out.clone(),
        containers: manifest.containers.iter().map(|c| c.name.clone()).collect(),
        images: images.values().map(|r| r.image.digest.clone()).collect(),
        initramfs_bytes: initramfs.len() as u64,
        built,
    })
}

/// Builds each distinct `build =` image of `manifest` with the Dockerfile
/// builder into the local store, under its [`manifest::BuildSpec::tag`]
/// (`pull`: resolve the base images in their registries again). The
/// results are used by digest and never pinned in `hafen.lock`: the
/// build's own cache makes an unchanged rebuild the same image.
fn build_dockerfiles(
    manifest: &manifest::Manifest,
    opts: &BuildOptions,
    store: &mut Option<Store>,
) -> Result<Vec<DockerfileBuild>, Error> {
    let mut done: Vec<DockerfileBuild> = Vec::new();
    for (i, c) in manifest.containers.iter().enumerate() {
        let ImageSource::Build(spec) = &c.image.source else {
            continue;
        };
        let tag = spec.tag.to_string();
        if done.iter().any(|d| d.tag == tag) {
            continue;
        }
        if !spec.context.is_dir() {
            return Err(Error::Manifest(manifest::ManifestError::Invalid {
                path: manifest.path.clone(),
                field: format!("container[{i}].build"),
                message: format!(
                    "container {:?}: the context {} is not a directory",
                    c.name,
                    spec.context.display()
                ),
            }));
        }
        let store = match store {
            Some(store) => store,
            None => store.insert(Store::open_default()?),
        };
        let request = dockerfile::cli::BuildRequest {
            context: spec.context.clone(),
            dockerfile: Some(spec.dockerfile.clone()),
            tags: vec![tag.clone()],
            build_args: spec.args.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            target: spec.target.clone(),
            pull: opts.pull,
            network: None,
            // The builder VM runs the kernel and init the image gets.
            kernel: opts.kernel.clone(),
            init: opts.init.clone(),
            ..Default::default()
        };
        eprintln!(
            "building {tag} for container {} from {}",
            c.name,
            spec.dockerfile.display()
        );
        let built =
            dockerfile::cli::build(&request, store).map_err(|source| Error::Dockerfile {
                container: c.name.clone(),
                context: spec.context.clone(),
                source: Box::new(source),
            })?;
        done.push(DockerfileBuild {
            tag,
            digest: built.digest,
            cached: built.cached,
            executed: built.executed,
            booted_vm: built.booted_vm,
        });
    }
    Ok(done)
}

/// What every image's initramfs holds besides its containers: the
/// directories PID 1 expects, /dev/console, hafen-init as /init, the base
/// files, the hostname and the network plan.
fn system_items(
    init: Vec<u8>,
    hostname: &str,
    network: &net::NetworkConfig,
) -> Result<BTreeMap<String, Item>, Error> {
    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    for dir in [
        "dev",
        "proc",
        "sys",
        "run",
        "etc",
        "var",
        "var/lib",
        "var/lib/hafen",
        "etc/hafen",
    ] {
        items.insert(dir.to_owned(), Item::dir(0o755));
    }
    items.insert("tmp".into(), Item::dir(0o1777));
    items.insert("root".into(), Item::dir(0o700));
    // The kernel opens /dev/console for /init's stdio before devtmpfs exists.
    items.insert(
        "dev/console".into(),
        Item {
            mode: cpio::kind::CHAR | 0o600,
            uid: 0,
            gid: 0,
            rdev: (5, 1),
            data: Arc::new(Vec::new()),
            link: None,
        },
    );
    items.insert(
        layout::INIT_PATH.trim_start_matches('/').to_owned(),
        Item::file(0o755, init),
    );
    for (path, text) in BASE_FILES {
        items.insert(
            (*path).to_owned(),
            Item::file(0o644, text.as_bytes().to_vec()),
        );
    }
    items.insert(
        layout::HOSTNAME_FILE.trim_start_matches('/').to_owned(),
        Item::file(0o644, format!("{hostname}\n").into_bytes()),
    );
    // Every image gets it: every VM has a NIC, and PID 1 sets up each
    // container's network from it.
    let mut network_json = serde_json::to_vec_pretty(network)
        .map_err(|e| Error::Invalid(format!("cannot encode {}: {e}", net::NETWORK_CONFIG)))?;
    network_json.push(b'\n');
    items.insert(
        net::NETWORK_CONFIG.trim_start_matches('/').to_owned(),
        Item::file(0o644, network_json),
    );
    // Each container's /etc/hosts, resolv.conf and hostname: made here, so
    // PID 1 only binds them (a container may still edit its own copy, as
    // in Docker, until the machine stops).
    let net_dir = net::NET_DIR.trim_start_matches('/');
    items.insert(net_dir.to_owned(), Item::dir(0o755));
    for container in &network.containers {
        let dir = format!("{net_dir}/{}", container.name);
        for (file, text) in net::container_files(network, container) {
            items.insert(
                format!("{dir}/{file}"),
                Item::file(0o644, text.into_bytes()),
            );
        }
        items.insert(dir, Item::dir(0o755));
    }
    Ok(items)
}

/// Writes an image directory (initramfs, image.json, the kernels) in one
/// piece: see [`write_output`].
fn write_image_dir(
    out: &Path,
    initramfs: &[u8],
    info: &ImageInfo,
    vmlinux: &Path,
    bzimage: Option<&Path>,
) -> Result<(), Error> {
    let info_json = serde_json::to_vec_pretty(info)
        .map_err(|e| Error::Invalid(format!("cannot encode image.json: {e}")))?;
    write_output(out, |tmp| {
        let put = |name: &str, bytes: &[u8]| -> Result<(), Error> {
            let path = tmp.join(name);
            let mut f = std::fs::File::create(&path).map_err(|source| Error::Output {
                path: path.clone(),
                source,
            })?;
            f.write_all(bytes).map_err(|source| Error::Output {
                path: path.clone(),
                source,
            })
        };
        put(&info.initrd, initramfs)?;
        put(IMAGE_INFO_FILE, &info_json)?;
        let copy = |from: &Path, name: &str| {
            std::fs::copy(from, tmp.join(name))
                .map(drop)
                .map_err(|source| Error::Input {
                    path: from.to_owned(),
                    source,
                })
        };
        copy(vmlinux, "vmlinux")?;
        if let Some(bz) = bzimage {
            copy(bz, "bzImage")?;
        }
        Ok(())
    })
}

/// Guest memory of a builder VM: RUN steps and their layers live in it.
pub const BUILDER_MEMORY_MIB: u32 = 1024;

/// Writes the image a Dockerfile build boots to run its RUN steps: the
/// kernel, hafen-init and [`hafen_proto::build::BUILDER_MARKER`], no
/// containers. `outbound` lets steps with `--network=host` reach beyond
/// the host (slirp's `restrict=off`). Reproducible, like every image.
pub fn build_builder(
    out: &Path,
    kernel: Option<&Path>,
    init: Option<&Path>,
    outbound: bool,
) -> Result<(), Error> {
    let (vmlinux, bzimage) = locate_kernel(kernel)?;
    let (_, init) = locate_init(init)?;
    let network =
        net::NetworkConfig::new(net::DEFAULT_SUBNET, outbound, net::DEFAULT_MTU, Vec::new())
            .map_err(Error::Invalid)?;
    let mut items = system_items(init, "hafen-build", &network)?;
    items.insert(
        hafen_proto::build::BUILDER_MARKER
            .trim_start_matches('/')
            .to_owned(),
        Item::file(0o644, b"hafen image build\n".to_vec()),
    );
    items.insert(
        layout::CONTAINERS_DIR.trim_start_matches('/').to_owned(),
        Item::dir(0o755),
    );
    let archive = write_cpio(&items).map_err(|source| Error::Output {
        path: out.to_owned(),
        source,
    })?;
    let (initrd, initramfs) = initramfs_file(archive);
    let info = ImageInfo {
        name: "hafen-build".into(),
        kernel: "vmlinux".into(),
        bzimage: bzimage.as_ref().map(|_| "bzImage".to_owned()),
        initrd: initrd.into(),
        cmdline: Vec::new(),
        memory_mib: BUILDER_MEMORY_MIB,
        volumes: Vec::new(),
        data_size: None,
        network: ImageNetwork {
            outbound,
            ..ImageNetwork::default()
        },
    };
    write_image_dir(out, &initramfs, &info, &vmlinux, bzimage.as_deref())
}

/// Fills a temporary sibling of `out` and moves it into place only when
/// `fill` succeeds: a failed build never leaves a half-written directory
/// and never touches an existing one.
fn write_output(out: &Path, fill: impl FnOnce(&Path) -> Result<(), Error>) -> Result<(), Error> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Invalid(format!("{} is not a directory name", out.display())))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| Error::Output {
        path: parent.to_owned(),
        source,
    })?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|source| Error::Output {
        path: tmp.clone(),
        source,
    })?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = out.exists();
    if had_old {
        std::fs::rename(out, &old).map_err(|source| {
            let _ = std::fs::remove_dir_all(&tmp);
            Error::Output {
                path: out.to_owned(),
                source,
            }
        })?;
    }
    if let Err(source) = std::fs::rename(&tmp, out) {
        if had_old {
            let _ = std::fs::rename(&old, out);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::Output {
            path: out.to_owned(),
            source,
        });
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
