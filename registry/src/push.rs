//! Pushing: blobs (skipped when present, mounted from another repository
//! when possible, else uploaded whole or in chunks) and manifests.

use std::io::{self, Read};
use std::time::Instant;

use url::Url;

use crate::auth::Scopes;
use crate::blob::BlobSource;
use crate::client::{in_parallel, Body, Client, Session};
use crate::error::RegistryError;
use crate::manifest::{sha256_digest, Descriptor};
use crate::progress::{Outcome, Progress};
use crate::reference::{is_sha256_digest, Reference};

/// What pushing a blob took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPush {
    /// The registry had it already.
    Exists,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Uploaded.
    Uploaded,
}

/// One blob of a parallel push.
pub struct PushJob<'a> {
    /// The blob (its digest and size are what the registry checks).
    pub descriptor: Descriptor,
    /// Its content.
    pub source: &'a dyn BlobSource,
    /// A repository of the same registry that may hold it already (where
    /// the image was pulled from), to mount instead of uploading.
    pub mount_from: Option<Reference>,
}

impl std::fmt::Debug for PushJob<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushJob")
            .field("descriptor", &self.descriptor)
            .field("mount_from", &self.mount_from)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Whether `reference`'s repository holds blob `digest` (HEAD).
    pub fn blob_exists(&self, reference: &Reference, digest: &str) -> Result<bool, RegistryError> {
        let session = self.session(&reference.registry)?;
        self.blob_exists_in(
            &session,
            reference,
            digest,
            Scopes::pull(&reference.repository),
        )
    }

    fn blob_exists_in(
        &self,
        session: &Session,
        reference: &Reference,
        digest: &str,
        scopes: Scopes,
    ) -> Result<bool, RegistryError> {
        let what = format!("{}: blob {digest}", reference.familiar());
        let path = format!("/v2/{}/blobs/{digest}", reference.repository);
        let response = self.send_retrying(session, || {
            Ok(session.request("HEAD", &path, scopes.clone(), what.clone()))
        })?;
        match response.status() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.status_error(session, response, &what, None)),
        }
    }

    /// Pushes one blob to `target`'s repository: nothing when it is there,
    /// a cross-repository mount when `mount_from` (same registry) has it,
    /// else an upload, whole up to [`ClientOptions::chunk_size`] and in
    /// chunks of that size beyond. Retried from the start on transient
    /// failures.
    ///
    /// [`ClientOptions::chunk_size`]: crate::ClientOptions::chunk_size
    pub fn push_blob(
        &self,
        target: &Reference,
        descriptor: &Descriptor,
        source: &dyn BlobSource,
        mount_from: Option<&Reference>,
        progress: &dyn Progress,
    ) -> Result<BlobPush, RegistryError> {
        let session = self.session(&target.registry)?;
        let digest = &descriptor.digest;
        if !is_sha256_digest(digest) {
            return Err(RegistryError::Protocol {
                what: target.familiar(),
                registry: session.registry.clone(),
                message: format!("cannot take blob {digest:?}: only sha256 digests are supported"),
            });
        }
        let mount_from = mount_from.filter(|from| {
            from.registry == target.registry && from.repository != target.repository
        });
        let mut scopes = Scopes::push(&target.repository);
        if let Some(from) = mount_from {
            scopes = scopes.with(format!("repository:{}:pull", from.repository));
        }
        progress.start(digest, descriptor.size);
        let result = self.push_blob_in(
            &session, target, descriptor, source, mount_from, &scopes, progress,
        );
        progress.finish(
            digest,
            match result {
                Ok(BlobPush::Exists) => Outcome::Exists,
                Ok(BlobPush::Mounted) => Outcome::Mounted,
                Ok(BlobPush::Uploaded) => Outcome::Uploaded,
                Err(_) => Outcome::Failed,
            },
        );
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn push_blob_in(
        &self,
        session: &Session,
        target: &Reference,
        descriptor: &Descriptor,
        source: &dyn BlobSource,
        mount_from: Option<&Reference>,
        scopes: &Scopes,
        progress: &dyn Progress,
    ) -> Result<BlobPush, RegistryError> {
        if self.blob_exists_in(session, target, &descriptor.digest, scopes.clone())? {
            return Ok(BlobPush::Exists);
        }
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.upload(
                session, target, descriptor, source, mount_from, scopes, progress,
            ) {
                Err(err)
                    if err.is_transient()
                        && self.should_retry(attempt, started, err.retry_after()) => {}
                Err(err) => return Err(err.after_attempts(attempt)),
                Ok(push) => return Ok(push),
            }
        }
    }

    /// Pushes several blobs, [`ClientOptions::parallel`] at a time; what
    /// each took, in `jobs` order. After the first failure no further blob
    /// is started.
    ///
    /// [`ClientOptions::parallel`]: crate::ClientOptions::parallel
    pub fn push_blobs(
        &self,
        target: &Reference,
        jobs: &[PushJob<'_>],
        progress: &dyn Progress,
    ) -> Result<Vec<BlobPush>, RegistryError> {
        let results = in_parallel(self.options.parallel, jobs.iter().collect(), |job| {
            self.push_blob(
                target,
                &job.descriptor,
                job.source,
                job.mount_from.as_ref(),
                progress,
            )
        });
        let mut out = Vec::with_capacity(results.len());
        let mut skipped = false;
        for result in results {
            match result {
                Some(Ok(push)) => out.push(push),
                Some(Err(err)) => return Err(err),
                None => skipped = true,
            }
        }
        if skipped {
            // Only a failure stops jobs from starting, and it was returned.
            return Err(RegistryError::Protocol {
                what: target.familiar(),
                registry: target.registry.clone(),
                message: "push stopped early".into(),
            });
        }
        Ok(out)
    }

    /// One upload: POST (with a mount request), then PUT the whole blob or
    /// PATCH it in chunks and PUT the digest.
    #[allow(clippy::too_many_arguments)]
    fn upload(
        &self,
        session: &Session,
        target: &Reference,
        descriptor: &Descriptor,
        source: &dyn BlobSource,
        mount_from: Option<&Reference>,
        scopes: &Scopes,
        progress: &dyn Progress,
    ) -> Result<BlobPush, RegistryError> {
        let digest = &descriptor.digest;
        let what = format!("{}: push blob {digest}", target.familiar());
        let mut request = session.request(
            "POST",
            &format!("/v2/{}/blobs/uploads/", target.repository),
            scopes.clone(),
            what.clone(),
        );
        if let Some(from) = mount_from {
            request
                .url
                .query_pairs_mut()
                .append_pair("mount", digest)
                .append_pair("from", &from.repository);
        }
        request.body = Body::Bytes(&[]);
        let response = self.send(session, request)?;
        let mut location = match response.status() {
            201 if mount_from.is_some() => return Ok(BlobPush::Mounted),
            202 => upload_location(session, &response, &what)?,
            _ => return Err(self.status_error(session, response, &what, None)),
        };
        let source_error = |source| RegistryError::Source {
            reference: target.familiar(),
            digest: digest.clone(),
            source,
        };
        let mut reader = source.open().map_err(source_error)?;
        let size = descriptor.size;
        let chunk = self.options.chunk_size.max(1);
        let mut sent = 0u64;
        if size > chunk {
            while sent < size {
                let n = chunk.min(size - sent);
                let mut body = Exact::new(&mut reader, n, sent, digest, progress);
                let headers = vec![
                    ("Content-Type", "application/octet-stream".to_owned()),
                    ("Content-Range", format!("{}-{}", sent, sent + n - 1)),
                ];
                let outcome = self.send_stream(
                    session, "PATCH", &location, scopes, headers, &mut body, n, &what,
                );
                let response = body.check(outcome).map_err(source_error)??;
                if response.status() != 202 {
                    return Err(self.status_error(session, response, &what, None));
                }
                location = upload_location(session, &response, &what)?;
                sent += n;
            }
        }
        location.query_pairs_mut().append_pair("digest", digest);
        let remaining = size - sent;
        let mut body = Exact::new(&mut reader, remaining, sent, digest, progress);
        let headers = vec![("Content-Type", "application/octet-stream".to_owned())];
        let outcome = self.send_stream(
            session, "PUT", &location, scopes, headers, &mut body, remaining, &what,
        );
        let response = body.check(outcome).map_err(source_error)??;
        if response.status() != 201 {
            return Err(self.status_error(session, response, &what, None));
        }
        if let Some(announced) = response.header("docker-content-digest") {
            if announced != digest {
                return Err(RegistryError::Protocol {
                    what,
                    registry: session.registry.clone(),
                    message: format!("stored the blob as {announced}"),
                });
            }
        }
        Ok(BlobPush::Uploaded)
    }

    /// Sends a streamed body of `len` bytes, with credentials only when
    /// `url` is the registry's own (an upload location may be elsewhere).
    #[allow(clippy::too_many_arguments)]
    fn send_stream(
        &self,
        session: &Session,
        method: &'static str,
        url: &Url,
        scopes: &Scopes,
        headers: Vec<(&'static str, String)>,
        body: impl Read,
        len: u64,
        what: &str,
    ) -> Result<ureq::Response, RegistryError> {
        // A request without a body gets the token (and any re-auth) first,
        // so the streamed one goes out with a fresh one.
        let mut call = session
            .agent()
            .request(method, url.as_str())
            .set("Content-Length", &len.to_string());
        for (name, value) in &headers {
            call = call.set(name, value);
        }
        if url.origin() == session.base.origin() {
            if let Some(header) = self.authorization(session, scopes, what)? {
                call = call.set("Authorization", &header);
            }
        }
        match call.send(body) {
            Ok(response) | Err(ureq::Error::Status(_, response)) => Ok(response),
            Err(ureq::Error::Transport(transport)) => {
                Err(self.transport_error(session, what, 1, transport))
            }
        }
    }

    /// Pushes a manifest to `target` (by its tag, else its digest) with
    /// its media type; the manifest's digest.
    pub fn push_manifest(
        &self,
        target: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, RegistryError> {
        let session = self.session(&target.registry)?;
        let digest = sha256_digest(bytes);
        let what = format!("{}: push manifest", target.familiar());
        if let Some(pinned) = &target.digest {
            if pinned != &digest {
                return Err(RegistryError::ManifestDigestMismatch {
                    reference: target.familiar(),
                    registry: session.registry.clone(),
                    expected: pinned.clone(),
                    actual: digest,
                });
            }
        }
        let tag = target.tag.as_deref().unwrap_or(&digest);
        let path = format!("/v2/{}/manifests/{tag}", target.repository);
        let response = self.send_retrying(&session, || {
            let mut request =
                session.request("PUT", &path, Scopes::push(&target.repository), what.clone());
            request
                .headers
                .push(("Content-Type", media_type.to_owned()));
            request.body = Body::Bytes(bytes);
            Ok(request)
        })?;
        if response.status() != 201 {
            return Err(self.status_error(&session, response, &what, Some(target)));
        }
        match response.header("docker-content-digest") {
            Some(announced) if announced != digest => Err(RegistryError::ManifestDigestMismatch {
                reference: target.familiar(),
                registry: session.registry.clone(),
                expected: digest,
                actual: announced.to_owned(),
            }),
            _ => Ok(digest),
        }
    }
}

/// The `Location` of an upload answer, resolved against the request's URL.
fn upload_location(
    session: &Session,
    response: &ureq::Response,
    what: &str,
) -> Result<Url, RegistryError> {
    let base = Url::parse(response.get_url()).unwrap_or_else(|_| session.base.clone());
    response
        .header("location")
        .and_then(|location| base.join(location).ok())
        .ok_or_else(|| RegistryError::Protocol {
            what: what.into(),
            registry: session.registry.clone(),
            message: "answered an upload request without a usable Location".into(),
        })
}

/// Exactly `len` bytes of a reader, reporting progress; a source that ends
/// early is an error rather than a request the server waits on forever.
struct Exact<'a, R> {
    inner: &'a mut R,
    left: u64,
    done: u64,
    digest: &'a str,
    progress: &'a dyn Progress,
    /// A failure reading the source (not the network).
    failed: Option<io::Error>,
}

impl<'a, R: Read> Exact<'a, R> {
    fn new(
        inner: &'a mut R,
        len: u64,
        done: u64,
        digest: &'a str,
        progress: &'a dyn Progress,
    ) -> Self {
        Exact {
            inner,
            left: len,
            done,
            digest,
            progress,
            failed: None,
        }
    }

    /// The request's outcome, unless reading the source failed: the
    /// transport error that caused is then the source's error, which no
    /// retry mends.
    fn check<T>(&mut self, outcome: T) -> Result<T, io::Error> {
        match self.failed.take() {
            Some(err) => Err(err),
            None => Ok(outcome),
        }
    }
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..max]) {
            Ok(0) => {
                let short = || {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the blob is shorter than its descriptor's size",
                    )
                };
                self.failed = Some(short());
                return Err(short());
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return Err(err),
            Err(err) => {
                let copy = io::Error::new(err.kind(), err.to_string());
                self.failed = Some(err);
                return Err(copy);
            }
        };
        self.left -= n as u64;
        self.done += n as u64;
        self.progress.advance(self.digest, self.done);
        Ok(n)
    }
}
