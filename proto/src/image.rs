//! `image.json`: what `hafen build` wrote into an image directory and
//! `hafen run` boots.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::net::{PublishedPort, Subnet, DEFAULT_SUBNET};

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
    /// How `hafen run` connects the VM's NIC (default: slirp's usual
    /// subnet, nothing beyond the host, no forwards).
    #[serde(default, skip_serializing_if = "ImageNetwork::is_default")]
    pub network: ImageNetwork,
}

/// What `hafen run` needs of the image's networking without reading the
/// initramfs: QEMU's user-networking subnet, whether the guest may reach
/// beyond the host, and the ports to forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageNetwork {
    /// Network address of the subnet.
    pub subnet: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The manifest's `[network] outbound`.
    #[serde(default)]
    pub outbound: bool,
    /// Every published port, in declared order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PublishedPort>,
}

impl ImageNetwork {
    /// The subnet, checked (an image.json edited by hand may hold a bad one).
    pub fn subnet(&self) -> Result<Subnet, String> {
        Subnet::new(self.subnet, self.prefix)
    }

    /// Whether this is what an image without a `[network]` table and
    /// without ports gets.
    pub fn is_default(&self) -> bool {
        *self == ImageNetwork::default()
    }
}

impl Default for ImageNetwork {
    fn default() -> Self {
        ImageNetwork {
            subnet: DEFAULT_SUBNET.network(),
            prefix: DEFAULT_SUBNET.prefix(),
            outbound: false,
            ports: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::PortMapping;

    fn info(network: ImageNetwork) -> ImageInfo {
        ImageInfo {
            name: "t".into(),
            kernel: "vmlinux".into(),
            bzimage: None,
            initrd: "initramfs.cpio.lz4".into(),
            cmdline: vec![],
            memory_mib: 256,
            volumes: vec![],
            data_size: None,
            network,
        }
    }

    #[test]
    fn an_image_json_without_network_gets_slirps_default_subnet_and_no_forwards() {
        let text = r#"{"name":"t","kernel":"vmlinux","initrd":"i","memory_mib":256}"#;
        let parsed: ImageInfo = serde_json::from_str(text).expect("parse");
        assert_eq!(parsed.network, ImageNetwork::default());
        assert_eq!(
            parsed.network.subnet().map(|s| s.to_string()).as_deref(),
            Ok("10.0.2.0/24")
        );
        assert!(!parsed.network.outbound);
        let json = serde_json::to_string(&info(ImageNetwork::default())).expect("json");
        assert!(!json.contains("network"), "the default is left out: {json}");
    }

    #[test]
    fn published_ports_round_trip_through_image_json() {
        let network = ImageNetwork {
            subnet: "192.168.7.0".parse().expect("ip"),
            prefix: 24,
            outbound: true,
            ports: vec![PublishedPort {
                container: "web".into(),
                address: "192.168.7.40".parse().expect("ip"),
                port: "0.0.0.0:8080:80/udp".parse::<PortMapping>().expect("port"),
            }],
        };
        let json = serde_json::to_string(&info(network.clone())).expect("json");
        let back: ImageInfo = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.network, network);
        let bad = ImageNetwork {
            prefix: 30,
            ..network
        };
        assert!(bad.subnet().is_err());
    }
}
