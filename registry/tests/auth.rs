//! Authentication: htpasswd (Basic) against Debian's registry, the Bearer
//! token flow against a stub registry, credentials kept from redirected
//! hosts, and TLS with a private CA.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::{
    filler, options, populate, HttpRequest, HttpResponse, Registry, RegistrySetup, Server,
};
use hafen_registry::credentials::AuthFiles;
use hafen_registry::manifest::sha256_digest;
use hafen_registry::{
    login, media, Client, ClientOptions, Credential, NoProgress, Platform, Reference, RegistryError,
};

fn reference(text: &str) -> Reference {
    text.parse().expect("reference")
}

fn credential(user: &str, password: &str) -> Credential {
    Credential {
        username: user.into(),
        password: password.into(),
    }
}

/// Options reading credentials from a temporary auth file holding
/// `registry` → `credential`.
fn with_auth_file(dir: &std::path::Path, registry: &str, credential: &Credential) -> ClientOptions {
    let file = dir.join("auth.json");
    let files = AuthFiles {
        read: vec![file.clone()],
        own: Some(file),
    };
    files.store(registry, credential).expect("store");
    ClientOptions {
        auth: files,
        ..options()
    }
}

fn htpasswd_registry() -> Registry {
    Registry::start_with(RegistrySetup {
        users: vec![("alice".into(), "s3cret:x".into())],
        ..RegistrySetup::default()
    })
}

#[test]
fn htpasswd_registry_takes_good_credentials_and_names_wrong_ones() {
    let registry = htpasswd_registry();
    let name = format!("{}/app:1", registry.addr());
    let image = populate(
        &name,
        &Platform::default(),
        &[filler(1, 1000)],
        &["--dest-tls-verify=false", "--dest-creds", "alice:s3cret:x"],
    );
    let r = reference(&name);
    let dir = tempfile::tempdir().expect("tempdir");

    let anonymous = Client::new(options());
    let err = anonymous
        .fetch_manifest(&r)
        .expect_err("anonymous is refused");
    assert!(matches!(err, RegistryError::AuthRequired { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("hafen login {}", registry.addr())),
        "{err}"
    );

    let good = Client::new(with_auth_file(
        dir.path(),
        &registry.addr(),
        &credential("alice", "s3cret:x"),
    ));
    let manifest = good.fetch_manifest(&r).expect("good credentials");
    assert_eq!(manifest.digest, image.manifest_descriptor.digest);
    let (bytes, layer) = image.layers[0].clone();
    let mut sink = Vec::new();
    good.pull_blob(&r, &layer, &mut sink, &NoProgress)
        .expect("blob with credentials");
    assert_eq!(sink, bytes);

    let bad = Client::new(with_auth_file(
        dir.path(),
        &registry.addr(),
        &credential("alice", "nope"),
    ));
    let err = bad.fetch_manifest(&r).expect_err("bad credentials");
    assert!(
        matches!(err, RegistryError::WrongCredentials { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "wrong credentials for {0}: hafen login {0}",
            registry.addr()
        )
    );

    // What `hafen login` checks before storing.
    let client = Client::new(options());
    client
        .check_credential(&registry.addr(), &credential("alice", "s3cret:x"))
        .expect("login check");
    let err = client
        .check_credential(&registry.addr(), &credential("bob", "x"))
        .expect_err("login check with wrong credentials");
    assert!(
        matches!(err, RegistryError::WrongCredentials { .. }),
        "{err}"
    );
}

#[test]
fn login_stores_only_checked_credentials_and_logout_removes_them() {
    let registry = htpasswd_registry();
    let dir = tempfile::tempdir().expect("tempdir");
    let own = dir.path().join("hafen/auth.json");
    let docker = dir.path().join("docker.json");
    std::fs::write(
        &docker,
        format!(
            r#"{{"auths": {{"http://{}": {{"auth": "{}"}}}}}}"#,
            registry.addr(),
            credential("old", "x").basic()
        ),
    )
    .expect("docker config");
    let options = ClientOptions {
        auth: AuthFiles {
            read: vec![own.clone(), docker.clone()],
            own: Some(own.clone()),
        },
        ..options()
    };
    let err = login::store_checked(&options, &registry.addr(), &credential("alice", "wrong"))
        .expect_err("wrong password");
    assert!(err.to_string().contains("wrong credentials"), "{err}");
    assert!(!own.exists(), "nothing stored for refused credentials");

    let stored = login::store_checked(
        &options,
        &format!("https://{}/", registry.addr()),
        &credential("alice", "s3cret:x"),
    )
    .expect("login");
    assert_eq!(stored, registry.addr());
    assert_eq!(
        options.auth.lookup(&registry.addr(), None).expect("lookup"),
        Some(credential("alice", "s3cret:x")),
        "hafen's own file is read before docker's"
    );
    // Authenticated, so an absent image is a plain "not found".
    let err = Client::new(options.clone())
        .fetch_manifest(&reference(&format!("{}/none:1", registry.addr())))
        .expect_err("no such image");
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");

    let out = login::logout(&options, &registry.addr()).expect("logout");
    assert!(out.removed);
    assert_eq!(out.still_in, vec![docker]);
    let again = login::logout(&options, &registry.addr()).expect("second logout");
    assert!(!again.removed);
    assert!(login::logout(&options, "bad host/x").is_err());
}

#[test]
fn credentials_are_not_sent_to_a_host_a_redirect_led_to() {
    let registry = htpasswd_registry();
    let name = format!("{}/app:1", registry.addr());
    let image = populate(
        &name,
        &Platform::default(),
        &[filler(2, 20_000)],
        &["--dest-tls-verify=false", "--dest-creds", "alice:s3cret:x"],
    );
    let (bytes, layer) = image.layers[0].clone();
    // "Storage": another origin serving the blob.
    let storage = {
        let bytes = bytes.clone();
        Server::start(move |_| HttpResponse::new(200, &[], &bytes))
    };
    let storage_url = format!("http://localhost:{}/blob?sig=1", storage.port);
    let digest = layer.digest.clone();
    let front = common::proxy(registry.addr(), move |request, response| {
        if common::is_blob_get(request, &digest) && response.status() == 200 {
            return HttpResponse::new(307, &[("Location", &storage_url)], b"");
        }
        response
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let client = Client::new(with_auth_file(
        dir.path(),
        &front.addr(),
        &credential("alice", "s3cret:x"),
    ));
    let r = reference(&format!("{}/app:1", front.addr()));
    let mut sink = Vec::new();
    client
        .pull_blob(&r, &layer, &mut sink, &NoProgress)
        .expect("redirected blob");
    assert_eq!(sink, bytes);
    let to_registry = front.requests();
    assert!(
        to_registry
            .iter()
            .any(|q| common::is_blob_get(q, &layer.digest) && q.header("authorization").is_some()),
        "the registry itself gets the credentials"
    );
    let to_storage = storage.requests();
    assert_eq!(to_storage.len(), 1);
    assert_eq!(to_storage[0].header("authorization"), None);
}

#[test]
fn tls_registry_with_a_private_ca_in_certs_d() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = common::make_certs(certs.path());
    let registry = Registry::start_with(RegistrySetup {
        tls: Some((cert, key)),
        ..RegistrySetup::default()
    });
    let name = format!("{}/app:1", registry.addr());
    let image = populate(
        &name,
        &Platform::default(),
        &[filler(3, 100)],
        &["--dest-tls-verify=false"],
    );
    let certs_d = tempfile::tempdir().expect("tempdir");
    let host_dir = certs_d.path().join(registry.addr());
    std::fs::create_dir(&host_dir).expect("mkdir");
    std::fs::copy(&ca, host_dir.join("ca.crt")).expect("copy CA");

    let trusted = Client::new(ClientOptions {
        certs_dirs: vec![certs_d.path().to_owned()],
        ..options()
    });
    let r = reference(&name);
    let manifest = trusted.fetch_manifest(&r).expect("TLS with the CA");
    assert_eq!(manifest.digest, image.manifest_descriptor.digest);

    // Without the CA: a TLS error saying where the CA goes, even though
    // a loopback registry may fall back to plain HTTP.
    let untrusted = Client::new(ClientOptions {
        certs_dirs: vec![certs.path().join("elsewhere")],
        ..options()
    });
    let err = untrusted.fetch_manifest(&r).expect_err("unknown CA");
    assert!(matches!(err, RegistryError::Tls { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&registry.addr()) && text.contains("ca.crt"),
        "{text}"
    );
    let chain = format!("{:?}", std::error::Error::source(&err));
    assert!(chain.contains("UnknownIssuer"), "{chain}");
}

// ---------------------------------------------------------------------------
// The Bearer flow against a stub: a registry whose /v2/ challenges to a
// token endpoint on the same server.

/// What the stub does: tokens it issued (token → scopes), and whether the
/// first use of a pull token is refused as expired.
#[derive(Default)]
struct Stub {
    tokens: HashMap<String, Vec<String>>,
    issued: usize,
    expire_first: bool,
}

const STUB_MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

fn stub_registry(expire_first: bool) -> (Server, Arc<Mutex<Stub>>) {
    let state = Arc::new(Mutex::new(Stub {
        expire_first,
        ..Stub::default()
    }));
    let port = Arc::new(Mutex::new(0u16));
    let server = {
        let state = state.clone();
        let port = port.clone();
        Server::start(move |request: &HttpRequest| {
            let port = *port.lock().expect("port");
            let challenge = |scope: Option<&str>, error: Option<&str>| {
                let mut value =
                    format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="stub""#);
                if let Some(scope) = scope {
                    value.push_str(&format!(r#",scope="{scope}""#));
                }
                if let Some(error) = error {
                    value.push_str(&format!(r#",error="{error}""#));
                }
                value
            };
            let mut stub = state.lock().expect("stub");
            let unauthorized = |value: String| {
                HttpResponse::new(
                    401,
                    &[("WWW-Authenticate", &value)],
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                )
            };
            if request.target.starts_with("/token") {
                let query = request.target.split_once('?').map_or("", |(_, q)| q);
                let scopes: Vec<String> = query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("scope="))
                    .map(|s| {
                        s.replace("%3A", ":")
                            .replace("%2C", ",")
                            .replace("%2F", "/")
                    })
                    .collect();
                let wants_push = scopes.iter().any(|s| s.contains("push"));
                let basic = request.header("authorization").unwrap_or("");
                let good = format!("Basic {}", credential("carol", "pw").basic());
                if !basic.is_empty() && basic != good {
                    return HttpResponse::new(401, &[], b"bad credentials");
                }
                if wants_push && basic.is_empty() {
                    // Anonymous users get a token without push.
                    let scopes: Vec<String> =
                        scopes.iter().map(|s| s.replace(",push", "")).collect();
                    stub.issued += 1;
                    let token = format!("t{}", stub.issued);
                    stub.tokens.insert(token.clone(), scopes);
                    let body = format!(r#"{{"token":"{token}","expires_in":300}}"#);
                    return HttpResponse::new(200, &[], body.as_bytes());
                }
                stub.issued += 1;
                let token = format!("t{}", stub.issued);
                stub.tokens.insert(token.clone(), scopes);
                let body = format!(r#"{{"access_token":"{token}"}}"#);
                return HttpResponse::new(200, &[], body.as_bytes());
            }
            let token = request
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if request.target == "/v2/" {
                return if stub.tokens.contains_key(token) {
                    HttpResponse::new(200, &[], b"{}")
                } else {
                    unauthorized(challenge(None, None))
                };
            }
            let push = request.method == "PUT";
            let needed = if push {
                "repository:app:pull,push"
            } else {
                "repository:app:pull"
            };
            let Some(granted) = stub.tokens.get(token).cloned() else {
                return unauthorized(challenge(Some(needed), None));
            };
            if stub.expire_first {
                stub.expire_first = false;
                stub.tokens.remove(token);
                return unauthorized(challenge(Some(needed), Some("invalid_token")));
            }
            if !granted
                .iter()
                .any(|g| g == needed || (!push && g == "repository:app:pull,push"))
            {
                return unauthorized(challenge(Some(needed), Some("insufficient_scope")));
            }
            match (request.method.as_str(), request.target.as_str()) {
                ("GET", "/v2/app/manifests/1") => {
                    HttpResponse::new(200, &[("Content-Type", media::OCI_MANIFEST)], STUB_MANIFEST)
                }
                ("GET", "/v2/app/manifests/old") => HttpResponse::new(
                    200,
                    &[("Content-Type", media::DOCKER_SCHEMA1)],
                    br#"{"schemaVersion":1}"#,
                ),
                ("PUT", "/v2/app/manifests/2") => {
                    let digest = sha256_digest(&request.body);
                    HttpResponse::new(201, &[("Docker-Content-Digest", &digest)], b"")
                }
                _ => HttpResponse::new(
                    404,
                    &[],
                    br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                ),
            }
        })
    };
    *port.lock().expect("port") = server.port;
    (server, state)
}

fn token_requests(server: &Server) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|q| q.target.starts_with("/token"))
        .map(|q| q.target)
        .collect()
}

#[test]
fn bearer_tokens_carry_service_and_scope_and_are_reused() {
    let (server, _) = stub_registry(false);
    let client = Client::new(options());
    let r = reference(&format!("{}/app:1", server.addr()));
    let manifest = client.fetch_manifest(&r).expect("anonymous token pull");
    assert_eq!(manifest.bytes, STUB_MANIFEST);
    client.fetch_manifest(&r).expect("again");
    let tokens = token_requests(&server);
    assert_eq!(tokens.len(), 1, "the token is reused: {tokens:?}");
    assert!(
        tokens[0].contains("service=stub") && tokens[0].contains("scope=repository%3Aapp%3Apull"),
        "{}",
        tokens[0]
    );

    let err = client
        .fetch_manifest(&reference(&format!("{}/app:old", server.addr())))
        .expect_err("schema 1");
    assert!(
        matches!(err, RegistryError::UnsupportedMediaType { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(media::DOCKER_SCHEMA1), "{err}");
}

#[test]
fn an_expired_token_is_replaced_once() {
    let (server, _) = stub_registry(true);
    let client = Client::new(options());
    let r = reference(&format!("{}/app:1", server.addr()));
    client.fetch_manifest(&r).expect("pull after re-auth");
    assert_eq!(token_requests(&server).len(), 2);
}

#[test]
fn push_scope_needs_credentials_and_wrong_ones_are_named() {
    let (server, _) = stub_registry(false);
    let target = reference(&format!("{}/app:2", server.addr()));
    let body = STUB_MANIFEST;

    let anonymous = Client::new(options());
    let err = anonymous
        .push_manifest(&target, media::OCI_MANIFEST, body)
        .expect_err("anonymous push");
    assert!(matches!(err, RegistryError::AuthRequired { .. }), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let good = Client::new(with_auth_file(
        dir.path(),
        &server.addr(),
        &credential("carol", "pw"),
    ));
    // A pull first: its token lacks push, so the push's 401
    // (insufficient_scope) makes the client ask for a wider one.
    good.fetch_manifest(&reference(&format!("{}/app:1", server.addr())))
        .expect("pull");
    let digest = good
        .push_manifest(&target, media::OCI_MANIFEST, body)
        .expect("push with credentials");
    assert_eq!(digest, sha256_digest(body));
    let tokens = token_requests(&server);
    assert!(
        tokens.iter().any(|t| t.contains("pull%2Cpush")),
        "a push token was asked for: {tokens:?}"
    );

    let bad = Client::new(with_auth_file(
        dir.path(),
        &server.addr(),
        &credential("carol", "wrong"),
    ));
    let err = bad
        .push_manifest(&target, media::OCI_MANIFEST, body)
        .expect_err("wrong credentials");
    assert!(
        matches!(err, RegistryError::WrongCredentials { .. }),
        "{err}"
    );
}
