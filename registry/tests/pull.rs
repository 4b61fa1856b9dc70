//! Pulling from Debian's registry (distribution 2.8) on loopback, populated
//! with skopeo; faults injected by a proxy in front of it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{filler, options, populate, proxy, HttpResponse, Registry};
use hafen_registry::{
    BlobJob, BlobSink, Client, FileSink, ManifestContent, NoProgress, Platform, Reference,
    RegistryError,
};

fn reference(text: &str) -> Reference {
    text.parse().expect("reference")
}

#[test]
fn plain_http_pull_verifies_manifest_and_blobs() {
    let registry = Registry::start();
    let name = format!("{}/team/app:1", registry.addr());
    let image = populate(
        &name,
        &Platform::default(),
        &[filler(1, 300_000), filler(2, 1000)],
        &["--dest-tls-verify=false"],
    );
    let client = Client::new(options());
    let r = reference(&name);
    let resolved = client.resolve(&r, &Platform::default()).expect("resolve");
    assert_eq!(resolved.manifest.bytes, image.manifest);
    assert_eq!(resolved.digest(), image.manifest_descriptor.digest);
    assert!(resolved.index.is_none());
    assert_eq!(resolved.image.layers.len(), 2);
    assert_eq!(
        client.resolve_digest(&r).expect("HEAD"),
        image.manifest_descriptor.digest
    );

    let blobs = image.blobs();
    let mut sinks: Vec<Vec<u8>> = blobs.iter().map(|_| Vec::new()).collect();
    let mut jobs: Vec<BlobJob<'_>> = blobs
        .iter()
        .zip(sinks.iter_mut())
        .map(|((_, d), sink)| BlobJob {
            descriptor: d.clone(),
            sink,
        })
        .collect();
    client
        .pull_blobs(&r, &mut jobs, &NoProgress)
        .expect("pull blobs");
    for ((bytes, _), sink) in blobs.iter().zip(&sinks) {
        assert_eq!(sink, bytes);
    }
}

#[test]
fn pull_by_digest_checks_the_digest() {
    let registry = Registry::start();
    let name = format!("{}/app:1", registry.addr());
    let image = populate(
        &name,
        &Platform::default(),
        &[filler(3, 100)],
        &["--dest-tls-verify=false"],
    );
    let client = Client::new(options());
    let pinned = reference(&format!(
        "{}/app@{}",
        registry.addr(),
        image.manifest_descriptor.digest
    ));
    let manifest = client.fetch_manifest(&pinned).expect("by digest");
    assert_eq!(manifest.digest, image.manifest_descriptor.digest);
    assert!(matches!(manifest.content, ManifestContent::Image(_)));
    let resolved = client
        .resolve(&pinned, &Platform::default())
        .expect("resolve by digest");
    assert_eq!(resolved.pinned(), pinned);

    let absent = reference(&format!(
        "{}/app@sha256:{}",
        registry.addr(),
        "0".repeat(64)
    ));
    let err = client.fetch_manifest(&absent).expect_err("absent digest");
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
}

#[test]
fn unknown_tag_and_repository_are_not_found_naming_the_registry() {
    let registry = Registry::start();
    let name = format!("{}/app:1", registry.addr());
    populate(
        &name,
        &Platform::default(),
        &[filler(4, 10)],
        &["--dest-tls-verify=false"],
    );
    let client = Client::new(options());
    for missing in ["app:2", "nothing/here:1"] {
        let r = reference(&format!("{}/{missing}", registry.addr()));
        let err = client
            .resolve(&r, &Platform::default())
            .expect_err("missing");
        let text = err.to_string();
        assert!(matches!(err, RegistryError::NotFound { .. }), "{text}");
        assert!(
            text.contains(missing)
                && text.contains(&registry.addr())
                && text.contains("check the name and tag"),
            "{text}"
        );
    }
}

#[test]
fn unreachable_registry_says_so() {
    let port = common::free_port();
    let client = Client::new(options());
    let r = reference(&format!("127.0.0.1:{port}/app:1"));
    let err = client
        .resolve(&r, &Platform::default())
        .expect_err("nothing listens");
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("127.0.0.1:{port} is not reachable")
    );
}

#[test]
fn two_platform_index_selects_the_platform_and_lists_the_others() {
    let registry = Registry::start();
    let amd64 = common::image(&Platform::default(), &[filler(5, 2000)]);
    let arm64 = common::image(
        &"linux/arm64/v8".parse().expect("platform"),
        &[filler(6, 2000)],
    );
    let layout = tempfile::tempdir().expect("tempdir");
    let index = common::write_multi_layout(layout.path(), "multi", &[amd64.clone(), arm64.clone()]);
    let name = format!("{}/multi:1", registry.addr());
    common::skopeo_copy(
        layout.path(),
        "multi",
        &name,
        &["--dest-tls-verify=false", "--all"],
    );

    let client = Client::new(options());
    let r = reference(&name);
    let resolved = client.resolve(&r, &Platform::default()).expect("amd64");
    assert_eq!(resolved.manifest.digest, amd64.manifest_descriptor.digest);
    let index_manifest = resolved.index.as_ref().expect("went through the index");
    assert_eq!(index_manifest.bytes, index);
    assert_eq!(resolved.digest(), index_manifest.digest);

    let arm = client
        .resolve(&r, &"linux/arm64".parse().expect("platform"))
        .expect("arm64");
    assert_eq!(arm.manifest.digest, arm64.manifest_descriptor.digest);

    let err = client
        .resolve(&r, &"linux/s390x".parse().expect("platform"))
        .expect_err("absent platform");
    let text = err.to_string();
    assert!(
        matches!(err, RegistryError::PlatformNotFound { .. }),
        "{text}"
    );
    assert!(
        text.contains("linux/s390x") && text.contains("linux/amd64, linux/arm64/v8"),
        "{text}"
    );
}

#[test]
fn corrupted_blob_is_rejected_and_nothing_is_kept() {
    let registry = Registry::start();
    let name = format!("{}/app:1", registry.addr());
    let image = populate(
        &name,
        &Platform::default(),
        &[filler(7, 50_000)],
        &["--dest-tls-verify=false"],
    );
    let (_, layer) = image.layers[0].clone();
    let digest = layer.digest.clone();
    let proxy = proxy(registry.addr(), move |request, mut response| {
        if common::is_blob_get(request, &digest) && response.status() == 200 {
            let at = response.body_start() + 1000;
            response.raw[at] ^= 0x40;
        }
        response
    });
    let client = Client::new(options());
    let r = reference(&format!("{}/app:1", proxy.addr()));

    let mut sink = Vec::new();
    let err = client
        .pull_blob(&r, &layer, &mut sink, &NoProgress)
        .expect_err("corrupt");
    let text = err.to_string();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{text}"
    );
    assert!(
        text.contains(&layer.digest) && text.contains(&proxy.addr()) && text.contains("app"),
        "{text}"
    );
    assert!(sink.is_empty(), "a bad blob leaves nothing in the sink");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("blob");
    let mut file = FileSink::create(&path).expect("file sink");
    client
        .pull_blob(&r, &layer, &mut file, &NoProgress)
        .expect_err("corrupt again");
    assert_eq!(file.len(), 0);
    assert!(!path.exists());
}

#[test]
fn truncated_download_resumes_with_range() {
    let registry = Registry::start();
    let name = format!("{}/app:1", registry.addr());
    let image = populate(
        &name,
        &Platform::default(),
        &[filler(8, 400_000)],
        &["--dest-tls-verify=false"],
    );
    let (bytes, layer) = image.layers[0].clone();
    let digest = layer.digest.clone();
    let cuts = Arc::new(AtomicUsize::new(0));
    let proxy = {
        let cuts = cuts.clone();
        proxy(
            registry.addr(),
            move |request, mut response: HttpResponse| {
                if common::is_blob_get(request, &digest)
                    && response.status() == 200
                    && cuts.fetch_add(1, Ordering::SeqCst) == 0
                {
                    let body = response.raw.len() - response.body_start();
                    response.cut_at = Some(response.body_start() + body / 2);
                }
                response
            },
        )
    };
    let client = Client::new(options());
    let r = reference(&format!("{}/app:1", proxy.addr()));
    let mut sink = Vec::new();
    client
        .pull_blob(&r, &layer, &mut sink, &NoProgress)
        .expect("resumed download");
    assert_eq!(sink, bytes);
    let ranges: Vec<String> = proxy
        .requests()
        .iter()
        .filter(|q| common::is_blob_get(q, &layer.digest))
        .filter_map(|q| q.header("range").map(str::to_owned))
        .collect();
    assert_eq!(ranges.len(), 1, "one resumed request: {ranges:?}");
    let start: u64 = ranges[0]
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .expect("bytes=N-");
    assert!(start > 0 && start < layer.size, "resumed at {start}");
}

#[test]
fn retries_on_503_then_gives_up_with_the_status() {
    let registry = Registry::start();
    let name = format!("{}/app:1", registry.addr());
    let image = populate(
        &name,
        &Platform::default(),
        &[filler(9, 100)],
        &["--dest-tls-verify=false"],
    );
    let failures = Arc::new(AtomicUsize::new(2));
    let proxy = {
        let failures = failures.clone();
        proxy(registry.addr(), move |request, response| {
            let is_manifest = request.target.contains("/manifests/");
            if is_manifest
                && failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return HttpResponse::new(503, &[], b"busy");
            }
            response
        })
    };
    let client = Client::new(options());
    let r = reference(&format!("{}/app:1", proxy.addr()));
    let manifest = client.fetch_manifest(&r).expect("after two 503s");
    assert_eq!(manifest.digest, image.manifest_descriptor.digest);

    failures.store(100, Ordering::SeqCst);
    let err = client.fetch_manifest(&r).expect_err("always 503");
    assert!(
        matches!(err, RegistryError::Status { status: 503, .. }),
        "{err}"
    );
    let manifest_requests = proxy
        .requests()
        .iter()
        .filter(|q| q.target.contains("/manifests/"))
        .count();
    // 3 for the first fetch, then the policy's 4 attempts.
    assert_eq!(manifest_requests, 3 + 4);
}

#[test]
fn a_partial_blob_from_an_earlier_run_is_resumed_and_a_bad_one_replaced() {
    let registry = Registry::start();
    let name = format!("{}/app:1", registry.addr());
    let image = populate(
        &name,
        &Platform::default(),
        &[filler(10, 100_000)],
        &["--dest-tls-verify=false"],
    );
    let (bytes, layer) = image.layers[0].clone();
    let front = proxy(registry.addr(), |_, response| response);
    let client = Client::new(options());
    let r = reference(&format!("{}/app:1", front.addr()));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("blob");
    let half = bytes.len() / 2;
    let mut sink = FileSink::create(&path).expect("sink");
    sink.write(&bytes[..half]).expect("write");
    drop(sink);
    let mut sink = FileSink::create(&path).expect("reopen");
    client
        .pull_blob(&r, &layer, &mut sink, &NoProgress)
        .expect("resumed from the partial file");
    sink.commit().expect("commit");
    assert_eq!(std::fs::read(&path).expect("read"), bytes);
    let ranges: Vec<String> = front
        .requests()
        .iter()
        .filter_map(|q| q.header("range").map(str::to_owned))
        .collect();
    assert_eq!(ranges, vec![format!("bytes={half}-")]);

    // Bytes that are not the blob's beginning: found out, and replaced.
    let mut garbage = filler(11, 1000);
    client
        .pull_blob(&r, &layer, &mut garbage, &NoProgress)
        .expect("fresh download after a bad partial");
    assert_eq!(garbage, bytes);
}
