//! Image references in docker's rules: `busybox:1.36`,
//! `ghcr.io/org/app:2`, `localhost:5000/app@sha256:…`.
//!
//! The rules are those of the distribution project's reference grammar:
//! a first path component holding a `.` or a `:`, or equal to `localhost`,
//! names the registry (otherwise it is `docker.io`); a one-component name
//! on docker.io lives under `library/`; with neither tag nor digest the tag
//! is `latest`. Repositories are lowercase.

use std::fmt;
use std::str::FromStr;

/// The registry an unqualified name lives in.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The host that serves docker.io's API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// Docker Hub's namespace for official images.
const OFFICIAL_PREFIX: &str = "library/";
/// The tag of a reference that names none.
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository path the grammar allows (registry excluded).
const MAX_NAME_LEN: usize = 255;
/// Longest tag.
const MAX_TAG_LEN: usize = 128;

/// A fully qualified image reference.
///
/// `tag` and `digest` may both be set (`app:2@sha256:…`); the digest then
/// decides what is pulled and the tag is informative, as in docker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host, with its port when one was given (`docker.io`,
    /// `localhost:5000`).
    pub registry: String,
    /// Repository path inside the registry (`library/busybox`).
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// `sha256:` and 64 lowercase hex digits, if any.
    pub digest: Option<String>,
}

/// What is wrong with a reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceErrorKind {
    /// Nothing was given.
    #[error("it is empty")]
    Empty,
    /// The repository has an uppercase letter.
    #[error("repository names must be lowercase")]
    Uppercase,
    /// A path component breaks the grammar.
    #[error(
        "path component {0:?} is not allowed: use lowercase letters, digits and \
         single separators (., _, __, -) between them"
    )]
    Component(String),
    /// The registry part is not a host name with an optional port.
    #[error("registry {0:?} is not a host name with an optional numeric port")]
    Registry(String),
    /// The tag breaks the grammar.
    #[error(
        "tag {0:?} is not allowed: up to 128 letters, digits, '_', '.' or '-', \
         not starting with '.' or '-'"
    )]
    Tag(String),
    /// The digest is not `sha256:` and 64 lowercase hex digits.
    #[error("digest {0:?} is not sha256: followed by 64 lowercase hex digits")]
    Digest(String),
    /// The repository path is too long.
    #[error("the repository name is longer than 255 characters")]
    TooLong,
    /// A bare 64-hex string: an image id, not a name.
    #[error("it looks like an image id; refer to an image by name or by name@sha256:ID")]
    ImageId,
}

/// A string that is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {kind}")]
pub struct ReferenceError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub kind: ReferenceErrorKind,
}

impl Reference {
    /// The short form docker prints: `busybox:1.36` for
    /// `docker.io/library/busybox:1.36`, `org/app` for `docker.io/org/app`;
    /// other registries keep their host.
    pub fn familiar(&self) -> String {
        let mut out = String::new();
        if self.registry == DEFAULT_REGISTRY {
            out.push_str(
                self.repository
                    .strip_prefix(OFFICIAL_PREFIX)
                    .filter(|rest| !rest.contains('/'))
                    .unwrap_or(&self.repository),
            );
        } else {
            out.push_str(&self.registry);
            out.push('/');
            out.push_str(&self.repository);
        }
        self.push_suffix(&mut out);
        out
    }

    /// The host (and port) that serves the registry's HTTP API:
    /// `registry-1.docker.io` for docker.io, the registry itself otherwise.
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What the registry API is asked for: the digest when there is one,
    /// else the tag (`latest` when neither is set).
    pub fn api_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    /// The same repository pinned to `digest` (the tag is kept for display).
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }

    fn push_suffix(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest);
        }
    }
}

/// The host serving `registry`'s API (`registry-1.docker.io` for docker.io).
pub fn api_host(registry: &str) -> &str {
    if registry == DEFAULT_REGISTRY {
        DOCKER_HUB_API_HOST
    } else {
        registry
    }
}

impl fmt::Display for Reference {
    /// The full normalized form: `docker.io/library/busybox:1.36`,
    /// `localhost:5000/app@sha256:…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        self.push_suffix(&mut out);
        f.write_str(&out)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse(input).map_err(|kind| ReferenceError {
            input: input.to_owned(),
            kind,
        })
    }
}

fn parse(input: &str) -> Result<Reference, ReferenceErrorKind> {
    if input.is_empty() {
        return Err(ReferenceErrorKind::Empty);
    }
    if input.len() == 64 && input.bytes().all(is_lower_hex) {
        return Err(ReferenceErrorKind::ImageId);
    }

    // 1. The digest follows the only '@' (names and tags cannot hold one).
    let (rest, digest) = match input.split_once('@') {
        Some((rest, digest)) => {
            check_digest(digest)?;
            (rest, Some(digest.to_owned()))
        }
        None => (input, None),
    };

    // 2. A tag follows a ':' after the last '/' (a ':' before it is a port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let tag = &rest[last_slash + i + 1..];
            check_tag(tag)?;
            (&rest[..last_slash + i], Some(tag.to_owned()))
        }
        None => (rest, None),
    };
    if name.is_empty() {
        return Err(ReferenceErrorKind::Empty);
    }

    // 3. The registry is the first component if it looks like a host.
    let (registry, repository) = match name.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            check_registry(first)?;
            let registry = if first == "index.docker.io" {
                DEFAULT_REGISTRY
            } else {
                first
            };
            (registry.to_owned(), path.to_owned())
        }
        _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
    };

    // 4. The repository path.
    if repository.len() > MAX_NAME_LEN {
        return Err(ReferenceErrorKind::TooLong);
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceErrorKind::Uppercase);
    }
    for component in repository.split('/') {
        check_component(component)?;
    }
    let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
        format!("{OFFICIAL_PREFIX}{repository}")
    } else {
        repository
    };

    let tag = match (&tag, &digest) {
        (None, None) => Some(DEFAULT_TAG.to_owned()),
        _ => tag,
    };
    Ok(Reference {
        registry,
        repository,
        tag,
        digest,
    })
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits.
pub fn is_sha256_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(is_lower_hex))
}

fn check_digest(digest: &str) -> Result<(), ReferenceErrorKind> {
    if is_sha256_digest(digest) {
        Ok(())
    } else {
        Err(ReferenceErrorKind::Digest(digest.to_owned()))
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), ReferenceErrorKind> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag.bytes().next().is_some_and(word)
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ReferenceErrorKind::Tag(tag.to_owned()))
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn check_component(component: &str) -> Result<(), ReferenceErrorKind> {
    let bad = || ReferenceErrorKind::Component(component.to_owned());
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return Err(bad());
    };
    if !alnum(first) || !alnum(last) {
        return Err(bad());
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or any number of '-'.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let run = &component[start..i];
        let allowed = matches!(run, "." | "_" | "__") || run.bytes().all(|b| b == b'-');
        if !allowed {
            return Err(bad());
        }
    }
    Ok(())
}

/// A host name (dot-separated labels) or a bracketed IPv6 address, with an
/// optional `:PORT`.
pub(crate) fn check_registry(registry: &str) -> Result<(), ReferenceErrorKind> {
    let bad = || ReferenceErrorKind::Registry(registry.to_owned());
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        match after {
            "" => (None, None),
            _ => (None, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |label: &str| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        };
        if !host.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(s: &str) -> Reference {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn refused(s: &str) -> ReferenceErrorKind {
        match s.parse::<Reference>() {
            Ok(r) => panic!("{s:?} should be refused, parsed as {r:?}"),
            Err(e) => {
                assert_eq!(e.input, s);
                e.kind
            }
        }
    }

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = parse(s);
        (r.registry, r.repository, r.tag, r.digest)
    }

    fn own(
        r: &str,
        p: &str,
        t: Option<&str>,
        d: Option<&str>,
    ) -> (String, String, Option<String>, Option<String>) {
        (
            r.to_owned(),
            p.to_owned(),
            t.map(str::to_owned),
            d.map(str::to_owned),
        )
    }

    #[test]
    fn docker_hub_names_get_the_default_registry_library_and_latest() {
        assert_eq!(
            parts("busybox"),
            own("docker.io", "library/busybox", Some("latest"), None)
        );
        assert_eq!(
            parts("busybox:1.36"),
            own("docker.io", "library/busybox", Some("1.36"), None)
        );
        assert_eq!(
            parts("org/app"),
            own("docker.io", "org/app", Some("latest"), None)
        );
        assert_eq!(
            parts("docker.io/busybox"),
            own("docker.io", "library/busybox", Some("latest"), None)
        );
        assert_eq!(
            parts("index.docker.io/library/busybox:1"),
            own("docker.io", "library/busybox", Some("1"), None)
        );
        assert_eq!(
            parts("a/b/c/d:v"),
            own("docker.io", "a/b/c/d", Some("v"), None)
        );
    }

    #[test]
    fn other_registries_are_recognised_by_dot_colon_or_localhost() {
        assert_eq!(
            parts("ghcr.io/org/app:2"),
            own("ghcr.io", "org/app", Some("2"), None)
        );
        assert_eq!(
            parts("localhost/app"),
            own("localhost", "app", Some("latest"), None)
        );
        assert_eq!(
            parts("localhost:5000/app:v1.2"),
            own("localhost:5000", "app", Some("v1.2"), None)
        );
        assert_eq!(
            parts("127.0.0.1:5000/a/b"),
            own("127.0.0.1:5000", "a/b", Some("latest"), None)
        );
        assert_eq!(
            parts("registry.example.com:443/team/app:x_y-z"),
            own("registry.example.com:443", "team/app", Some("x_y-z"), None)
        );
        assert_eq!(
            parts("[::1]:5000/app:1"),
            own("[::1]:5000", "app", Some("1"), None)
        );
        // A single name with a dot on docker.io is still a registry only
        // when a path follows it.
        assert_eq!(
            parts("my.app"),
            own("docker.io", "library/my.app", Some("latest"), None)
        );
    }

    #[test]
    fn digests_and_tags_with_digests() {
        let with_digest = format!("localhost:5000/app@{D}");
        assert_eq!(
            parts(&with_digest),
            own("localhost:5000", "app", None, Some(D))
        );
        let both = format!("ghcr.io/org/app:2@{D}");
        assert_eq!(parts(&both), own("ghcr.io", "org/app", Some("2"), Some(D)));
        let r = parse(&both);
        assert_eq!(r.api_reference(), D);
        assert_eq!(r.to_string(), both);
        assert_eq!(parse("busybox").api_reference(), "latest");
    }

    #[test]
    fn display_is_the_full_normalized_form_and_round_trips() {
        for (input, full) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("org/app:2", "docker.io/org/app:2"),
            ("ghcr.io/org/app:2", "ghcr.io/org/app:2"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
        ] {
            let r = parse(input);
            assert_eq!(r.to_string(), full);
            assert_eq!(parse(full), r, "{full} round trip");
        }
        let pinned = format!("localhost:5000/app@{D}");
        assert_eq!(parse(&pinned).to_string(), pinned);
    }

    #[test]
    fn familiar_is_what_docker_prints() {
        assert_eq!(
            parse("docker.io/library/busybox:1.36").familiar(),
            "busybox:1.36"
        );
        assert_eq!(parse("busybox").familiar(), "busybox:latest");
        assert_eq!(parse("org/app:2").familiar(), "org/app:2");
        assert_eq!(parse("ghcr.io/org/app:2").familiar(), "ghcr.io/org/app:2");
        assert_eq!(
            parse(&format!("busybox@{D}")).familiar(),
            format!("busybox@{D}")
        );
        // library/ is only hidden for a single-component name under it.
        assert_eq!(parse("library/a/b").familiar(), "library/a/b:latest");
    }

    #[test]
    fn api_host_maps_docker_hub() {
        assert_eq!(parse("busybox").api_host(), "registry-1.docker.io");
        assert_eq!(parse("localhost:5000/a").api_host(), "localhost:5000");
        assert_eq!(parse("ghcr.io/o/a").api_host(), "ghcr.io");
    }

    #[test]
    fn uppercase_repositories_are_refused() {
        assert_eq!(refused("Busybox"), ReferenceErrorKind::Uppercase);
        assert_eq!(refused("ghcr.io/Org/app"), ReferenceErrorKind::Uppercase);
        // Uppercase in a tag or registry host is fine.
        assert_eq!(
            parts("Registry.Example.com/app:V1").2.as_deref(),
            Some("V1")
        );
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        assert_eq!(refused(""), ReferenceErrorKind::Empty);
        assert_eq!(refused(":tag"), ReferenceErrorKind::Empty);
        assert_eq!(refused("busybox:"), ReferenceErrorKind::Tag(String::new()));
        assert_eq!(refused("busybox:.x"), ReferenceErrorKind::Tag(".x".into()));
        assert!(matches!(
            refused(&format!("busybox:{}", "a".repeat(129))),
            ReferenceErrorKind::Tag(_)
        ));
        assert_eq!(
            refused("busybox@sha256:abc"),
            ReferenceErrorKind::Digest("sha256:abc".into())
        );
        assert_eq!(
            refused(&format!(
                "busybox@{}",
                D.to_uppercase().replace("SHA256", "sha256")
            )),
            ReferenceErrorKind::Digest(D.to_uppercase().replace("SHA256", "sha256"))
        );
        assert!(matches!(
            refused("busybox@md5:00"),
            ReferenceErrorKind::Digest(_)
        ));
        assert_eq!(
            refused("a//b"),
            ReferenceErrorKind::Component(String::new())
        );
        assert_eq!(
            refused("app-"),
            ReferenceErrorKind::Component("app-".into())
        );
        assert_eq!(
            refused("a..b"),
            ReferenceErrorKind::Component("a..b".into())
        );
        assert_eq!(
            refused("a___b"),
            ReferenceErrorKind::Component("a___b".into())
        );
        assert_eq!(
            refused("localhost:50a0/app"),
            ReferenceErrorKind::Registry("localhost:50a0".into())
        );
        assert_eq!(
            refused("bad_host.io/app"),
            ReferenceErrorKind::Registry("bad_host.io".into())
        );
        assert_eq!(
            refused("localhost:5000/"),
            ReferenceErrorKind::Component(String::new())
        );
        assert_eq!(refused(&"a".repeat(256)), ReferenceErrorKind::TooLong);
        assert_eq!(refused(&D[7..]), ReferenceErrorKind::ImageId);
        let message = "Busybox"
            .parse::<Reference>()
            .expect_err("uppercase")
            .to_string();
        assert!(
            message.contains("\"Busybox\"") && message.contains("lowercase"),
            "{message}"
        );
    }

    #[test]
    fn separators_inside_components_follow_the_grammar() {
        for ok in ["a.b", "a_b", "a__b", "a-b", "a---b", "a1.b2_c3__d4-e5"] {
            assert_eq!(parse(ok).repository, format!("library/{ok}"));
        }
    }
}
