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

/// The virtio-9p mount tag of a volume backed by a host directory
/// (`hafen run -v DIR:NAME`) is this prefix then NAME; read-only ones use
/// [`HOST_VOLUME_RO_TAG`].
pub const HOST_VOLUME_TAG: &str = "hafen-vol:";

/// The mount tag prefix of a read-only host directory volume.
pub const HOST_VOLUME_RO_TAG: &str = "hafen-vol-ro:";

/// The ext4 label of the data disk.
pub const DATA_LABEL: &str = "hafen-data";

/// Default size of a data disk: sparse, so this is an upper bound.
pub const DEFAULT_DATA_SIZE: u64 = 1 << 30;

/// Path of the init binary inside the initramfs (the kernel runs `/init`).
pub const INIT_PATH: &str = "/init";

/// The label of the ext2/3/4 file system whose first bytes (at least its
/// superblock, which starts at byte 1024) are `start`; `None` when
/// `start` holds none.
pub fn ext4_label(start: &[u8]) -> Option<String> {
    const SUPERBLOCK: usize = 1024;
    let magic = start.get(SUPERBLOCK + 56..SUPERBLOCK + 58)?;
    if magic != [0x53, 0xef] {
        return None;
    }
    let name = start.get(SUPERBLOCK + 120..SUPERBLOCK + 136)?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Whether `name` can name a volume: `[a-z0-9][a-z0-9_.-]*`, at most 64
/// bytes. It becomes a directory name on the data disk, so it can never be
/// `..`, contain a `/` or start with the `.` of PID 1's own work directories.
pub fn valid_volume_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_labels_are_read_from_the_superblock() {
        let mut disk = vec![0u8; 2048];
        assert_eq!(ext4_label(&disk), None);
        disk[1024 + 56] = 0x53;
        disk[1024 + 57] = 0xef;
        disk[1024 + 120..1024 + 130].copy_from_slice(b"hafen-data");
        assert_eq!(ext4_label(&disk).as_deref(), Some("hafen-data"));
        disk[1024 + 120..1024 + 136].copy_from_slice(b"0123456789abcdef");
        assert_eq!(ext4_label(&disk).as_deref(), Some("0123456789abcdef"));
        assert_eq!(ext4_label(&disk[..1100]), None);
    }
}
