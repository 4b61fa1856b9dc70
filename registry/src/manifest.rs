//! Manifests as registries serve them: OCI image indexes and manifests,
//! Docker's manifest lists and schema 2 manifests, and choosing a platform
//! from an index.
//!
//! The types are the few fields a pull and a push need; the bytes a
//! registry served are always kept beside them, because a manifest's
//! digest is over those bytes, never over a re-serialization.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Media types of manifests and layers.
pub mod media {
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// Docker's manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker's schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI uncompressed layer.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI zstd layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker's image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker's gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker's schema 1 manifest (refused: unsigned v1 images are gone
    /// from every registry that matters).
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

    /// The `Accept` header of a manifest request: every type Hafen reads.
    pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.docker.distribution.manifest.v2+json";

    /// Whether `media_type` is an index or manifest list.
    pub fn is_index(media_type: &str) -> bool {
        media_type == OCI_INDEX || media_type == DOCKER_LIST
    }

    /// Whether `media_type` is a single-platform image manifest.
    pub fn is_image(media_type: &str) -> bool {
        media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
    }
}

/// A content descriptor: what a manifest says about a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:HEX`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// The platform, in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index or manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// One manifest per platform (and attestations).
    pub manifests: Vec<Descriptor>,
}

/// A single-platform image manifest (OCI, or Docker's schema 2, which has
/// the same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// An operating system and CPU architecture (and variant), as in
/// `linux/amd64` or `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture, in Go's names (`amd64`, `arm64`, `arm`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// CPU variant (`v7`, `v8`), when it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Default for Platform {
    /// `linux/amd64`, what Hafen's VMs run.
    fn default() -> Platform {
        Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// A `--platform` value that is not `OS/ARCH[/VARIANT]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("platform {0:?} is not OS/ARCH or OS/ARCH/VARIANT (e.g. linux/amd64, linux/arm/v7)")]
pub struct PlatformError(pub String);

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(text: &str) -> Result<Platform, PlatformError> {
        let parts: Vec<&str> = text.split('/').collect();
        let ok =
            |s: &&str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: Some(variant.to_ascii_lowercase()),
            }),
            _ => Err(PlatformError(text.to_owned())),
        }
    }
}

impl Platform {
    /// Whether an index entry for `entry` serves this platform. A variant
    /// asked for must match (an `arm64` entry without one counts as `v8`);
    /// without one asked for, any variant does.
    pub fn matches(&self, entry: &Platform) -> bool {
        if self.os != entry.os || self.architecture != entry.architecture {
            return false;
        }
        let Some(wanted) = &self.variant else {
            return true;
        };
        let implied = (entry.architecture == "arm64").then_some("v8");
        entry.variant.as_deref().or(implied) == Some(wanted.as_str())
    }
}

impl Index {
    /// The manifest for `platform`: the first matching entry.
    pub fn select(&self, platform: &Platform) -> Option<&Descriptor> {
        self.manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
    }

    /// The platforms the index offers, for an error message
    /// (`linux/amd64, linux/arm64/v8`), attestations (`unknown/unknown`)
    /// left out.
    pub fn platforms(&self) -> String {
        let names: Vec<String> = self
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .filter(|p| p.os != "unknown")
            .map(Platform::to_string)
            .collect();
        if names.is_empty() {
            "no platforms".into()
        } else {
            names.join(", ")
        }
    }
}

/// `sha256:` and the hex sha256 of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// The media type of a manifest: the response's `Content-Type` when it
/// names a manifest type, else the document's own `mediaType` field
/// (some registries answer `application/json`), else, for a document with
/// `manifests`, an OCI index and, with `config`, an OCI manifest.
pub(crate) fn detect_media_type(content_type: Option<&str>, bytes: &[u8]) -> String {
    let header = content_type
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
        .filter(|v| !v.is_empty() && v != "application/json" && v != "text/plain");
    if let Some(header) = header {
        return header;
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
        schema_version: Option<u32>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe {
            media_type: Some(m),
            ..
        }) => m,
        Ok(Probe {
            manifests: Some(_), ..
        }) => media::OCI_INDEX.to_owned(),
        Ok(Probe {
            config: Some(_), ..
        }) => media::OCI_MANIFEST.to_owned(),
        Ok(Probe {
            schema_version: Some(1),
            ..
        }) => media::DOCKER_SCHEMA1.to_owned(),
        _ => content_type.unwrap_or("unknown").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(platform: &str) -> Descriptor {
        Descriptor {
            media_type: media::OCI_MANIFEST.into(),
            digest: sha256_digest(platform.as_bytes()),
            size: 1,
            platform: Some(platform.parse().expect("platform")),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn platforms_parse_and_print() {
        let p: Platform = "linux/arm/v7".parse().expect("parse");
        assert_eq!(p.variant.as_deref(), Some("v7"));
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert_eq!(Platform::default().to_string(), "linux/amd64");
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn index_selection_by_platform_and_variant() {
        let index = Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.into()),
            manifests: vec![
                entry("linux/arm/v6"),
                entry("linux/arm/v7"),
                entry("linux/arm64"),
                entry("linux/amd64"),
                entry("unknown/unknown"),
            ],
        };
        let pick = |p: &str| {
            index
                .select(&p.parse().expect("platform"))
                .map(|d| d.platform.clone().expect("platform").to_string())
        };
        assert_eq!(pick("linux/amd64").as_deref(), Some("linux/amd64"));
        assert_eq!(pick("linux/arm/v7").as_deref(), Some("linux/arm/v7"));
        assert_eq!(pick("linux/arm").as_deref(), Some("linux/arm/v6"));
        assert_eq!(pick("linux/arm64/v8").as_deref(), Some("linux/arm64"));
        assert_eq!(pick("linux/arm/v5"), None);
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(
            index.platforms(),
            "linux/arm/v6, linux/arm/v7, linux/arm64, linux/amd64"
        );
    }

    #[test]
    fn media_type_from_header_or_document() {
        let oci = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{}}"#;
        assert_eq!(
            detect_media_type(
                Some("application/vnd.docker.distribution.manifest.v2+json"),
                oci
            ),
            media::DOCKER_MANIFEST
        );
        assert_eq!(
            detect_media_type(Some("application/json"), oci),
            media::OCI_MANIFEST
        );
        assert_eq!(
            detect_media_type(None, br#"{"schemaVersion":2,"manifests":[]}"#),
            media::OCI_INDEX
        );
        assert_eq!(
            detect_media_type(None, br#"{"schemaVersion":1,"fsLayers":[]}"#),
            media::DOCKER_SCHEMA1
        );
    }

    #[test]
    fn digest_of_bytes() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
