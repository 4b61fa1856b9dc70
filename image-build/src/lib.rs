//! Turns a `hafen.toml` manifest and OCI images into a bootable image
//! directory (kernel, initramfs, image.json). Work in progress: see issue 2.

use std::fmt;
use std::path::PathBuf;

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
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildSummary {
    /// The image directory.
    pub out: PathBuf,
}

impl fmt::Display for BuildSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "built {}", self.out.display())
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
}

/// What an import produced.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// The layout directory.
    pub layout: PathBuf,
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "imported into {}", self.layout.display())
    }
}

/// A build or import failed.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Builds an image directory from a manifest.
pub fn build(_opts: &BuildOptions) -> Result<BuildSummary, Error> {
    Err(Error("not implemented yet".into()))
}

/// Makes an OCI image layout from a root filesystem.
pub fn import(_opts: &ImportOptions) -> Result<ImportSummary, Error> {
    Err(Error("not implemented yet".into()))
}
