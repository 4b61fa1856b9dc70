//! Where things live in a Hafen guest's root filesystem.

/// Directory holding one OCI runtime bundle per container (`NAME/config.json`).
pub const CONTAINERS_DIR: &str = "/etc/hafen/containers";

/// Directory holding each image's flattened root filesystem, one folder per
/// image named after the image manifest's digest (`sha256-HEX/`).
pub const IMAGES_DIR: &str = "/var/lib/hafen/images";

/// The file the guest's hostname is read from.
pub const HOSTNAME_FILE: &str = "/etc/hostname";

/// Where PID 1 mounts the data disk (found by its label, [`DATA_LABEL`]).
pub const DATA_DIR: &str = "/run/hafen/data";

/// Where volume `NAME` lives: `DATA_DIR/volumes/NAME`, the source of the
/// bind mounts `hafen build` writes into the bundles.
pub const VOLUMES_DIR: &str = "/run/hafen/data/volumes";

/// The ext4 label of the data disk.
pub const DATA_LABEL: &str = "hafen-data";

/// Default size of a data disk: sparse, so this is an upper bound.
pub const DEFAULT_DATA_SIZE: u64 = 1 << 30;

/// Path of the init binary inside the initramfs (the kernel runs `/init`).
pub const INIT_PATH: &str = "/init";
