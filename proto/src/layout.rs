//! Where things live in a Hafen guest's root filesystem.

/// Directory holding one OCI runtime bundle per container (`NAME/config.json`).
pub const CONTAINERS_DIR: &str = "/etc/hafen/containers";

/// Directory holding each image's flattened root filesystem, one folder per
/// image named after the image manifest's digest (`sha256-HEX/`).
pub const IMAGES_DIR: &str = "/var/lib/hafen/images";

/// The file the guest's hostname is read from.
pub const HOSTNAME_FILE: &str = "/etc/hostname";

/// Path of the init binary inside the initramfs (the kernel runs `/init`).
pub const INIT_PATH: &str = "/init";
