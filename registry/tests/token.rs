//! The Bearer token flow against Debian's registry in `auth: token` mode,
//! with a token server in the test signing ES256 JWTs (the registry checks
//! them against the signer's certificate, sent as `x5c`).

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::{filler, options, HttpRequest, HttpResponse, Registry, RegistrySetup, Server};
use hafen_registry::credentials::AuthFiles;
use hafen_registry::{
    media, BlobPush, Client, ClientOptions, Credential, NoProgress, Platform, PushJob, Reference,
    RegistryError,
};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

const USER: &str = "erin";
const PASSWORD: &str = "token-pw";

/// The token signer: its key and its certificate (DER), made by openssl.
struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    rng: SystemRandom,
}

fn make_signer(dir: &std::path::Path) -> (Signer, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "signer.key",
        "-out",
        "signer.crt",
        "-days",
        "2",
        "-subj",
        "/CN=token signer",
    ]);
    run(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "signer.key",
        "-outform",
        "DER",
        "-out",
        "signer.p8",
    ]);
    run(&[
        "x509",
        "-in",
        "signer.crt",
        "-outform",
        "DER",
        "-out",
        "signer.der",
    ]);
    let rng = SystemRandom::new();
    let pkcs8 = std::fs::read(dir.join("signer.p8")).expect("key");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
        .expect("usable P-256 key");
    let cert_der = std::fs::read(dir.join("signer.der")).expect("cert");
    (Signer { key, cert_der, rng }, dir.join("signer.crt"))
}

impl Signer {
    fn token(&self, subject: &str, access: &[serde_json::Value], id: u64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("time")
            .as_secs();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": common::TOKEN_ISSUER,
            "sub": subject,
            "aud": common::TOKEN_SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("t{id}"),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("sign");
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("utf8");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("utf8")
}

/// The token endpoint: anonymous users may pull, `USER` may also push;
/// a wrong password is refused.
fn token_server(signer: Signer) -> Server {
    let counter = AtomicU64::new(0);
    Server::start(move |request: &HttpRequest| {
        let query = request.target.split_once('?').map_or("", |(_, q)| q);
        let mut service = String::new();
        let mut scopes = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "service" => service = percent_decode(v),
                "scope" => scopes.push(percent_decode(v)),
                _ => {}
            }
        }
        if service != common::TOKEN_SERVICE {
            return HttpResponse::new(400, &[], b"wrong service");
        }
        let good = format!(
            "Basic {}",
            Credential {
                username: USER.into(),
                password: PASSWORD.into()
            }
            .basic()
        );
        let subject = match request.header("authorization") {
            None => "",
            Some(value) if value == good => USER,
            Some(_) => return HttpResponse::new(401, &[], b"wrong credentials"),
        };
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|scope| {
                let mut parts = scope.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                let granted: Vec<&str> = actions
                    .split(',')
                    .filter(|a| *a == "pull" || (*a == "push" && !subject.is_empty()))
                    .collect();
                Some(serde_json::json!({"type": kind, "name": name, "actions": granted}))
            })
            .collect();
        let id = counter.fetch_add(1, Ordering::SeqCst);
        let token = serde_json::json!({
            "token": signer.token(subject, &access, id),
            "expires_in": 300,
        });
        HttpResponse::new(
            200,
            &[("Content-Type", "application/json")],
            token.to_string().as_bytes(),
        )
    })
}

fn reference(text: &str) -> Reference {
    text.parse().expect("reference")
}

/// A client whose only credential file (in `dir`) holds `credential` for
/// `registry`, or a client without credentials.
fn client_with(dir: &std::path::Path, registry: &str, credential: Option<Credential>) -> Client {
    let file = dir.join(format!("auth-{}.json", auth_file_name(&credential)));
    let files = AuthFiles {
        read: vec![file.clone()],
        own: Some(file),
    };
    if let Some(credential) = &credential {
        files.store(registry, credential).expect("store");
    }
    Client::new(ClientOptions {
        auth: files,
        ..options()
    })
}

fn auth_file_name(credential: &Option<Credential>) -> String {
    credential
        .as_ref()
        .map_or("none".into(), |c| format!("{}-{}", c.username, c.password))
}

#[test]
fn bearer_tokens_from_a_token_server_pull_push_and_mount() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (signer, cert) = make_signer(certs.path());
    let tokens = Arc::new(token_server(signer));
    let registry = Registry::start_with(RegistrySetup {
        token: Some((format!("http://{}/token", tokens.addr()), cert)),
        ..RegistrySetup::default()
    });
    let name = format!("{}/team/app:1", registry.addr());
    let image = common::populate(
        &name,
        &Platform::default(),
        &[filler(1, 5000)],
        &[
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("{USER}:{PASSWORD}"),
        ],
    );
    let source = reference(&name);

    // Anonymous: pull works, push does not.
    let dir = tempfile::tempdir().expect("tempdir");
    let anonymous = client_with(dir.path(), &registry.addr(), None);
    let resolved = anonymous
        .resolve(&source, &Platform::default())
        .expect("anonymous pull");
    assert_eq!(resolved.digest(), image.manifest_descriptor.digest);
    let (bytes, layer) = image.layers[0].clone();
    let mut sink = Vec::new();
    anonymous
        .pull_blob(&source, &layer, &mut sink, &NoProgress)
        .expect("anonymous blob");
    assert_eq!(sink, bytes);
    let err = anonymous
        .push_manifest(&source, media::OCI_MANIFEST, &image.manifest)
        .expect_err("anonymous push");
    assert!(matches!(err, RegistryError::AuthRequired { .. }), "{err}");

    // With credentials: the blobs are mounted into another repository
    // (a token for both scopes) and the manifest pushed.
    let user = client_with(
        dir.path(),
        &registry.addr(),
        Some(Credential {
            username: USER.into(),
            password: PASSWORD.into(),
        }),
    );
    let target = reference(&format!("{}/team/copy:1", registry.addr()));
    let blobs = image.blobs();
    let jobs: Vec<PushJob<'_>> = blobs
        .iter()
        .map(|(bytes, d)| PushJob {
            descriptor: d.clone(),
            source: bytes,
            mount_from: Some(source.clone()),
        })
        .collect();
    let pushed = user
        .push_blobs(&target, &jobs, &NoProgress)
        .expect("mount with a token");
    assert_eq!(pushed, vec![BlobPush::Mounted; blobs.len()]);
    let digest = user
        .push_manifest(&target, media::OCI_MANIFEST, &image.manifest)
        .expect("push with a token");
    assert_eq!(digest, image.manifest_descriptor.digest);
    let asked: Vec<String> = tokens
        .requests()
        .iter()
        .map(|q| percent_decode(&q.target))
        .collect();
    assert!(
        asked
            .iter()
            .any(|t| t.contains("scope=repository:team/copy:pull,push")
                && t.contains("scope=repository:team/app:pull")),
        "one token for the target and the mount source: {asked:#?}"
    );

    let wrong = client_with(
        dir.path(),
        &registry.addr(),
        Some(Credential {
            username: USER.into(),
            password: "nope".into(),
        }),
    );
    let err = wrong
        .resolve(&source, &Platform::default())
        .expect_err("wrong password");
    assert!(
        matches!(err, RegistryError::WrongCredentials { .. }),
        "{err}"
    );
}
