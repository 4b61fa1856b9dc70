//! Pushing to Debian's registry and pulling back.

mod common;

use std::process::Command;

use common::{filler, options, Registry, RegistrySetup};
use hafen_registry::credentials::AuthFiles;
use hafen_registry::{
    media, BlobPush, Client, ClientOptions, Credential, NoProgress, Platform, PushJob, Reference,
    RegistryError,
};

fn reference(text: &str) -> Reference {
    text.parse().expect("reference")
}

#[test]
fn push_then_pull_back_gives_the_same_manifest_digest() {
    let registry = Registry::start_with(RegistrySetup {
        users: vec![("dave".into(), "pw".into())],
        ..RegistrySetup::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.json");
    let files = AuthFiles {
        read: vec![auth.clone()],
        own: Some(auth),
    };
    let credential = Credential {
        username: "dave".into(),
        password: "pw".into(),
    };
    files.store(&registry.addr(), &credential).expect("store");
    // Small chunks, so the big layer goes up in several PATCHes and the
    // others in one PUT.
    let client = Client::new(ClientOptions {
        auth: files,
        chunk_size: 64 << 10,
        ..options()
    });
    let image = common::image(&Platform::default(), &[filler(1, 400_000), filler(2, 3000)]);
    let target = reference(&format!("{}/pushed/app:1", registry.addr()));
    let blobs = image.blobs();
    assert!(blobs[1].1.size > 64 << 10, "one layer is chunked");
    let jobs: Vec<PushJob<'_>> = blobs
        .iter()
        .map(|(bytes, d)| PushJob {
            descriptor: d.clone(),
            source: bytes,
            mount_from: None,
        })
        .collect();
    let pushed = client
        .push_blobs(&target, &jobs, &NoProgress)
        .expect("push blobs");
    assert_eq!(pushed, vec![BlobPush::Uploaded; 3]);
    let digest = client
        .push_manifest(&target, media::OCI_MANIFEST, &image.manifest)
        .expect("push manifest");
    assert_eq!(digest, image.manifest_descriptor.digest);

    // Pulled back by us and seen by skopeo with the same digest.
    let resolved = client
        .resolve(&target, &Platform::default())
        .expect("pull back");
    assert_eq!(resolved.digest(), digest);
    for (bytes, d) in &blobs {
        let mut sink = Vec::new();
        client
            .pull_blob(&target, d, &mut sink, &NoProgress)
            .expect("blob back");
        assert_eq!(&sink, bytes);
    }
    let raw = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            "dave:pw",
        ])
        .arg(format!("docker://{target}"))
        .env_remove("REGISTRY_AUTH_FILE")
        .output()
        .expect("skopeo inspect");
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert_eq!(raw.stdout, image.manifest);

    // Again: everything is there already.
    let again = client
        .push_blobs(&target, &jobs, &NoProgress)
        .expect("push again");
    assert_eq!(again, vec![BlobPush::Exists; 3]);

    // To another repository: mounted from the first, nothing uploaded.
    let other = reference(&format!("{}/other/app:1", registry.addr()));
    let mounted_jobs: Vec<PushJob<'_>> = blobs
        .iter()
        .map(|(bytes, d)| PushJob {
            descriptor: d.clone(),
            source: bytes,
            mount_from: Some(target.clone()),
        })
        .collect();
    let mounted = client
        .push_blobs(&other, &mounted_jobs, &NoProgress)
        .expect("mount");
    assert_eq!(mounted, vec![BlobPush::Mounted; 3]);
    let digest = client
        .push_manifest(&other, media::OCI_MANIFEST, &image.manifest)
        .expect("push manifest to the other repository");
    assert_eq!(digest, image.manifest_descriptor.digest);
}

#[test]
fn a_blob_whose_content_does_not_match_its_digest_is_refused_by_the_registry() {
    let registry = Registry::start();
    let client = Client::new(options());
    let image = common::image(&Platform::default(), &[filler(3, 5000)]);
    let (_, layer) = image.layers[0].clone();
    let wrong = filler(4, layer.size as usize);
    let target = reference(&format!("{}/app:1", registry.addr()));
    let err = client
        .push_blob(&target, &layer, &wrong, None, &NoProgress)
        .expect_err("digest mismatch");
    assert!(
        matches!(err, RegistryError::Status { status: 400, .. })
            && err.to_string().contains("DIGEST_INVALID"),
        "{err}"
    );
    assert!(!client.blob_exists(&target, &layer.digest).expect("HEAD"));
}

#[test]
fn a_short_source_is_a_read_error_not_a_network_retry() {
    let registry = Registry::start();
    let client = Client::new(options());
    let image = common::image(&Platform::default(), &[filler(5, 5000)]);
    let (bytes, layer) = image.layers[0].clone();
    let short = bytes[..bytes.len() / 2].to_vec();
    let target = reference(&format!("{}/app:1", registry.addr()));
    let err = client
        .push_blob(&target, &layer, &short, None, &NoProgress)
        .expect_err("short source");
    assert!(matches!(err, RegistryError::Source { .. }), "{err}");
    assert!(!client.blob_exists(&target, &layer.digest).expect("HEAD"));
}
