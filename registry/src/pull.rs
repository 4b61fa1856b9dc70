//! Pulling: manifests (with the platform chosen from an index) and blobs,
//! every byte verified against its digest before the caller may keep it.

use std::io::Read;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::auth::Scopes;
use crate::blob::BlobSink;
use crate::client::{in_parallel, Client, Session};
use crate::error::RegistryError;
use crate::manifest::{
    detect_media_type, hex, media, sha256_digest, Descriptor, ImageManifest, Index, Platform,
};
use crate::progress::{Outcome, Progress};
use crate::reference::{is_sha256_digest, Reference};

/// The largest manifest accepted (the distribution project's limit).
const MANIFEST_LIMIT: u64 = 4 << 20;
/// How deep indexes may nest.
const MAX_INDEX_DEPTH: usize = 2;
/// Bytes read from the network at a time.
const READ_BUFFER: usize = 64 << 10;

/// A manifest as the registry served it.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its media type.
    pub media_type: String,
    /// `sha256:` of `bytes`, verified against what was asked for.
    pub digest: String,
    /// The bytes, exactly as served.
    pub bytes: Vec<u8>,
    /// The parsed document.
    pub content: ManifestContent,
}

/// An index or an image manifest.
#[derive(Debug, Clone)]
pub enum ManifestContent {
    /// An OCI index or Docker manifest list.
    Index(Index),
    /// An OCI or Docker schema 2 image manifest.
    Image(ImageManifest),
}

/// An image resolved to one platform's manifest.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference asked for.
    pub reference: Reference,
    /// The index the platform was chosen from, if the reference named one.
    pub index: Option<Manifest>,
    /// The platform's image manifest.
    pub manifest: Manifest,
    /// Its parsed content.
    pub image: ImageManifest,
}

impl ResolvedImage {
    /// The digest the reference resolved to: the index's when there is
    /// one (what docker records and what pins every platform), else the
    /// manifest's.
    pub fn digest(&self) -> &str {
        self.index
            .as_ref()
            .unwrap_or(&self.manifest)
            .digest
            .as_str()
    }

    /// The reference pinned to [`ResolvedImage::digest`].
    pub fn pinned(&self) -> Reference {
        self.reference.with_digest(self.digest())
    }
}

/// One blob of a parallel download.
pub struct BlobJob<'a> {
    /// What to fetch (digest and size are verified).
    pub descriptor: Descriptor,
    /// Where it goes.
    pub sink: &'a mut (dyn BlobSink + Send),
}

impl std::fmt::Debug for BlobJob<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobJob")
            .field("descriptor", &self.descriptor)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Fetches the manifest `reference` names (its digest, else its tag),
    /// verifying its digest: ours of the bytes always, against the
    /// reference's digest and the registry's `Docker-Content-Digest`.
    pub fn fetch_manifest(&self, reference: &Reference) -> Result<Manifest, RegistryError> {
        let session = self.session(&reference.registry)?;
        self.fetch_manifest_in(&session, reference, reference.api_reference())
    }

    /// Resolves `reference` to the image manifest for `platform`: an
    /// index or manifest list is looked into, a single manifest is taken
    /// as it is.
    pub fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let session = self.session(&reference.registry)?;
        let top = self.fetch_manifest_in(&session, reference, reference.api_reference())?;
        let mut index = None;
        let mut current = top;
        for _ in 0..=MAX_INDEX_DEPTH {
            match &current.content {
                ManifestContent::Image(image) => {
                    let image = image.clone();
                    return Ok(ResolvedImage {
                        reference: reference.clone(),
                        index,
                        manifest: current,
                        image,
                    });
                }
                ManifestContent::Index(list) => {
                    let Some(entry) = list.select(platform) else {
                        return Err(RegistryError::PlatformNotFound {
                            reference: reference.familiar(),
                            platform: platform.to_string(),
                            available: list.platforms(),
                        });
                    };
                    let child = self.fetch_manifest_in(&session, reference, &entry.digest)?;
                    if child.bytes.len() as u64 != entry.size {
                        return Err(RegistryError::Protocol {
                            what: reference.familiar(),
                            registry: reference.registry.clone(),
                            message: format!(
                                "served manifest {} with {} bytes where the index says {}",
                                entry.digest,
                                child.bytes.len(),
                                entry.size
                            ),
                        });
                    }
                    index.get_or_insert(current);
                    current = child;
                }
            }
        }
        Err(RegistryError::Protocol {
            what: reference.familiar(),
            registry: reference.registry.clone(),
            message: "served indexes nested too deep".into(),
        })
    }

    /// The digest `reference` currently resolves to in the registry (its
    /// top-level manifest), from a HEAD request when the registry
    /// announces it, else from the manifest itself.
    pub fn resolve_digest(&self, reference: &Reference) -> Result<String, RegistryError> {
        let session = self.session(&reference.registry)?;
        let what = reference.familiar();
        let path = format!(
            "/v2/{}/manifests/{}",
            reference.repository,
            reference.api_reference()
        );
        let response = self.send_retrying(&session, || {
            let mut request = session.request(
                "HEAD",
                &path,
                Scopes::pull(&reference.repository),
                what.clone(),
            );
            request.headers.push(("Accept", media::ACCEPT.into()));
            Ok(request)
        })?;
        if response.status() != 200 {
            return Err(self.status_error(&session, response, &what, Some(reference)));
        }
        match response.header("docker-content-digest") {
            Some(digest) if is_sha256_digest(digest) => {
                if let Some(asked) = &reference.digest {
                    if asked != digest {
                        return Err(RegistryError::ManifestDigestMismatch {
                            reference: what,
                            registry: session.registry.clone(),
                            expected: asked.clone(),
                            actual: digest.to_owned(),
                        });
                    }
                }
                Ok(digest.to_owned())
            }
            _ => Ok(self.fetch_manifest(reference)?.digest),
        }
    }

    fn fetch_manifest_in(
        &self,
        session: &Session,
        reference: &Reference,
        api_reference: &str,
    ) -> Result<Manifest, RegistryError> {
        let what = reference.familiar();
        let registry = session.registry.clone();
        let path = format!("/v2/{}/manifests/{api_reference}", reference.repository);
        let mut attempt = 0;
        let started = Instant::now();
        let (content_type, announced, bytes) = loop {
            attempt += 1;
            let response = self.send_retrying(session, || {
                let mut request = session.request(
                    "GET",
                    &path,
                    Scopes::pull(&reference.repository),
                    what.clone(),
                );
                request.headers.push(("Accept", media::ACCEPT.into()));
                Ok(request)
            })?;
            if response.status() != 200 {
                return Err(self.status_error(session, response, &what, Some(reference)));
            }
            let content_type = response.header("content-type").map(str::to_owned);
            let announced = response.header("docker-content-digest").map(str::to_owned);
            let mut bytes = Vec::new();
            match response
                .into_reader()
                .take(MANIFEST_LIMIT + 1)
                .read_to_end(&mut bytes)
            {
                Ok(_) => break (content_type, announced, bytes),
                Err(source) => {
                    if self.should_retry(attempt, started, None) {
                        continue;
                    }
                    return Err(RegistryError::Connection {
                        what,
                        registry,
                        attempts: attempt,
                        source: Box::new(source),
                    });
                }
            }
        };
        if bytes.len() as u64 > MANIFEST_LIMIT {
            return Err(RegistryError::Protocol {
                what,
                registry,
                message: "served a manifest larger than 4 MiB".into(),
            });
        }
        let digest = sha256_digest(&bytes);
        let expected = is_sha256_digest(api_reference)
            .then(|| api_reference.to_owned())
            .or(announced.filter(|d| is_sha256_digest(d)));
        if let Some(expected) = expected {
            if expected != digest {
                return Err(RegistryError::ManifestDigestMismatch {
                    reference: what,
                    registry,
                    expected,
                    actual: digest,
                });
            }
        }
        let media_type = detect_media_type(content_type.as_deref(), &bytes);
        let invalid = |source| RegistryError::InvalidManifest {
            reference: what.clone(),
            registry: registry.clone(),
            source,
        };
        let content = if media::is_index(&media_type) {
            ManifestContent::Index(serde_json::from_slice(&bytes).map_err(invalid)?)
        } else if media::is_image(&media_type) {
            ManifestContent::Image(serde_json::from_slice(&bytes).map_err(invalid)?)
        } else {
            return Err(RegistryError::UnsupportedMediaType {
                reference: what,
                registry,
                media_type,
            });
        };
        Ok(Manifest {
            media_type,
            digest,
            bytes,
            content,
        })
    }

    /// Downloads one blob of `reference`'s repository into `sink`,
    /// verifying size and digest; resumes with `Range` after a dropped
    /// connection (and after bytes the sink already holds, if it can show
    /// them). `Ok` means the sink holds exactly the blob.
    pub fn pull_blob(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        sink: &mut dyn BlobSink,
        progress: &dyn Progress,
    ) -> Result<(), RegistryError> {
        let session = self.session(&reference.registry)?;
        progress.start(&descriptor.digest, descriptor.size);
        let result = self.download(&session, reference, descriptor, sink, progress);
        let outcome = match result {
            Ok(()) => Outcome::Downloaded,
            Err(_) => Outcome::Failed,
        };
        progress.finish(&descriptor.digest, outcome);
        result
    }

    /// Downloads several blobs, [`ClientOptions::parallel`] at a time.
    /// After the first failure no further blob is started; that failure is
    /// returned once the running ones end. Each job's sink is complete and
    /// verified only if the whole call returns `Ok`.
    ///
    /// [`ClientOptions::parallel`]: crate::ClientOptions::parallel
    pub fn pull_blobs(
        &self,
        reference: &Reference,
        jobs: &mut [BlobJob<'_>],
        progress: &dyn Progress,
    ) -> Result<(), RegistryError> {
        let results = in_parallel(self.options.parallel, jobs.iter_mut().collect(), |job| {
            self.pull_blob(reference, &job.descriptor, job.sink, progress)
        });
        // The first failure in job order (others may have failed after it).
        match results.into_iter().flatten().find_map(Result::err) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn download(
        &self,
        session: &Session,
        reference: &Reference,
        descriptor: &Descriptor,
        sink: &mut dyn BlobSink,
        progress: &dyn Progress,
    ) -> Result<(), RegistryError> {
        let digest = &descriptor.digest;
        let sink_error = |source| RegistryError::Sink {
            reference: reference.familiar(),
            digest: digest.clone(),
            source,
        };
        if !is_sha256_digest(digest) {
            return Err(RegistryError::Protocol {
                what: reference.familiar(),
                registry: session.registry.clone(),
                message: format!("lists blob {digest:?}: only sha256 digests are supported"),
            });
        }
        let mut state = Transfer::new();
        let mut adopted = false;
        if !sink.is_empty() {
            state.adopt(sink, descriptor.size).map_err(sink_error)?;
            adopted = state.have > 0;
        }
        match self.transfer(session, reference, descriptor, sink, progress, &mut state) {
            // Bytes kept from an earlier run were bad (they are gone now):
            // one fresh download.
            Err(RegistryError::DigestMismatch { .. } | RegistryError::TooLarge { .. })
                if adopted =>
            {
                let mut fresh = Transfer::new();
                fresh.restart(sink).map_err(sink_error)?;
                self.transfer(session, reference, descriptor, sink, progress, &mut fresh)
            }
            other => other,
        }
    }

    /// Downloads the rest of the blob after `state`, retrying transient
    /// failures (resuming each time), and checks the digest. A blob that is
    /// too large or hashes wrong is removed from the sink.
    fn transfer(
        &self,
        session: &Session,
        reference: &Reference,
        descriptor: &Descriptor,
        sink: &mut dyn BlobSink,
        progress: &dyn Progress,
        state: &mut Transfer,
    ) -> Result<(), RegistryError> {
        let digest = &descriptor.digest;
        let sink_error = |source| RegistryError::Sink {
            reference: reference.familiar(),
            digest: digest.clone(),
            source,
        };
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.download_attempt(session, reference, descriptor, sink, progress, state) {
                Ok(()) => break,
                Err(err)
                    if err.is_transient()
                        && self.should_retry(attempt, started, err.retry_after()) => {}
                Err(err) => {
                    if matches!(err, RegistryError::TooLarge { .. }) {
                        sink.reset().map_err(sink_error)?;
                    }
                    return Err(err.after_attempts(attempt));
                }
            }
        }
        let hasher = std::mem::take(&mut state.hasher);
        let actual = format!("sha256:{}", hex(&hasher.finalize()));
        if &actual != digest {
            sink.reset().map_err(sink_error)?;
            return Err(RegistryError::DigestMismatch {
                reference: reference.familiar(),
                registry: session.registry.clone(),
                digest: digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// One GET of the blob from `state.have` on. Transient errors leave
    /// `state` and the sink consistent for the next attempt to resume.
    fn download_attempt(
        &self,
        session: &Session,
        reference: &Reference,
        descriptor: &Descriptor,
        sink: &mut dyn BlobSink,
        progress: &dyn Progress,
        state: &mut Transfer,
    ) -> Result<(), RegistryError> {
        let digest = &descriptor.digest;
        let size = descriptor.size;
        let what = format!("{}: blob {digest}", reference.familiar());
        let sink_error = |source| RegistryError::Sink {
            reference: reference.familiar(),
            digest: digest.clone(),
            source,
        };
        let truncated = |received| RegistryError::Truncated {
            reference: reference.familiar(),
            registry: session.registry.clone(),
            digest: digest.clone(),
            received,
            expected: size,
        };
        if state.have == size && size > 0 {
            return Ok(());
        }
        let path = format!("/v2/{}/blobs/{digest}", reference.repository);
        let mut request = session.request(
            "GET",
            &path,
            Scopes::pull(&reference.repository),
            what.clone(),
        );
        if state.have > 0 {
            request
                .headers
                .push(("Range", format!("bytes={}-", state.have)));
        }
        let response = self.send(session, request)?;
        match response.status() {
            200 => {
                if state.have > 0 {
                    // The registry (or its storage) ignored the range.
                    state.restart(sink).map_err(sink_error)?;
                }
            }
            206 => {
                let start = response
                    .header("content-range")
                    .and_then(|v| v.trim().strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(state.have) {
                    state.restart(sink).map_err(sink_error)?;
                    return Err(truncated(0));
                }
            }
            404 => {
                return Err(RegistryError::BlobNotFound {
                    reference: reference.familiar(),
                    registry: session.registry.clone(),
                    digest: digest.clone(),
                })
            }
            416 => {
                state.restart(sink).map_err(sink_error)?;
                return Err(truncated(0));
            }
            _ => return Err(self.status_error(session, response, &what, None)),
        }
        let mut reader = response.into_reader();
        let mut buf = vec![0u8; READ_BUFFER];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(truncated(state.have))
                }
                Err(source) => {
                    return Err(RegistryError::Connection {
                        what,
                        registry: session.registry.clone(),
                        attempts: 1,
                        source: Box::new(source),
                    })
                }
            };
            if state.have + n as u64 > size {
                return Err(RegistryError::TooLarge {
                    reference: reference.familiar(),
                    registry: session.registry.clone(),
                    digest: digest.clone(),
                    expected: size,
                });
            }
            sink.write(&buf[..n]).map_err(sink_error)?;
            state.hasher.update(&buf[..n]);
            state.have += n as u64;
            progress.advance(digest, state.have);
        }
        if state.have < size {
            return Err(truncated(state.have));
        }
        Ok(())
    }
}

/// A download's running hash and length.
struct Transfer {
    hasher: Sha256,
    have: u64,
}

impl Transfer {
    fn new() -> Transfer {
        Transfer {
            hasher: Sha256::new(),
            have: 0,
        }
    }

    /// Takes over what a sink already holds if it can show it (and it is
    /// not more than the blob), else empties the sink.
    fn adopt(&mut self, sink: &mut dyn BlobSink, size: u64) -> std::io::Result<()> {
        let expected = sink.len();
        let mut hasher = Sha256::new();
        let mut seen = 0u64;
        if let Some(mut reader) = sink.existing()? {
            let mut buf = vec![0u8; READ_BUFFER];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                seen += n as u64;
            }
        }
        if seen == expected && seen > 0 && seen <= size {
            self.hasher = hasher;
            self.have = seen;
            Ok(())
        } else {
            self.restart(sink)
        }
    }

    fn restart(&mut self, sink: &mut dyn BlobSink) -> std::io::Result<()> {
        self.hasher = Sha256::new();
        self.have = 0;
        sink.reset()
    }
}
