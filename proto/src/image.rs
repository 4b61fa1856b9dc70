//! `image.json`: what `hafen build` wrote into an image directory and
//! `hafen run` boots.

use serde::{Deserialize, Serialize};

/// File name of the image description inside an image directory.
pub const IMAGE_INFO_FILE: &str = "image.json";

/// Describes a built image; paths are relative to the image directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    /// The manifest's `name`.
    pub name: String,
    /// Uncompressed kernel with a PVH entry point, for `-M microvm`.
    pub kernel: String,
    /// Compressed kernel for machines that boot a bzImage, when the build had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bzimage: Option<String>,
    /// Compressed newc cpio holding hafen-init, the bundles and the image trees.
    pub initrd: String,
    /// Extra kernel command-line words the image asks for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmdline: Vec<String>,
    /// Guest memory in MiB the image asks for.
    pub memory_mib: u32,
    /// The volumes on the data disk (declared and anonymous); `hafen run`
    /// attaches a data disk only when there are some.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Size in bytes of the data disk created on first boot (the manifest's
    /// `data_size`); `hafen run --data-size` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_size: Option<u64>,
}
