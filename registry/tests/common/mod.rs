//! Test fixtures: Debian's registry started on a free loopback port, OCI
//! layouts made in Rust and pushed with skopeo, and a tiny HTTP server for
//! proxies and stubs that misbehave on purpose.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use hafen_registry::manifest::sha256_digest;
use hafen_registry::{media, ClientOptions, Descriptor, Platform, RetryPolicy};

/// A free TCP port on 127.0.0.1 (bound and released; the registry binds
/// it again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Client options for tests: no user files, quick retries.
pub fn options() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            attempts: 4,
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            max_total: Duration::from_secs(20),
        },
        read_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

/// How to configure a test registry.
#[derive(Debug, Default)]
pub struct RegistrySetup {
    /// `(user, password)` pairs for an htpasswd (bcrypt) file.
    pub users: Vec<(String, String)>,
    /// Serve TLS with this certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Bearer token auth: the token endpoint's URL, and the certificate
    /// that signs its tokens.
    pub token: Option<(String, PathBuf)>,
}

/// The `service` and `issuer` a token-auth test registry expects.
pub const TOKEN_SERVICE: &str = "hafen-test-registry";
pub const TOKEN_ISSUER: &str = "hafen-test-issuer";

/// Debian's `docker-registry` on 127.0.0.1, killed (by PID) and waited for
/// when dropped, even when the test panics.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// A registry without auth or TLS.
    pub fn start() -> Registry {
        Registry::start_with(RegistrySetup::default())
    }

    pub fn start_with(setup: RegistrySetup) -> Registry {
        // A port found free may be taken by another test before the
        // registry binds it: try another one then.
        for _ in 0..3 {
            if let Some(registry) = Registry::try_start(&setup) {
                return registry;
            }
        }
        panic!("docker-registry found no free port in three tries");
    }

    /// `None` when the port was taken meanwhile.
    fn try_start(setup: &RegistrySetup) -> Option<Registry> {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let storage = dir.path().join("storage");
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((cert, key)) = &setup.tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if !setup.users.is_empty() {
            let htpasswd = dir.path().join("htpasswd");
            let mut lines = String::new();
            for (user, password) in &setup.users {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("run htpasswd (apache2-utils)");
                assert!(out.status.success(), "htpasswd failed");
                lines.push_str(String::from_utf8_lossy(&out.stdout).trim());
                lines.push('\n');
            }
            std::fs::write(&htpasswd, lines).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        if let Some((realm, cert)) = &setup.token {
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    \
                 issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                cert.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let mut command = Command::new("docker-registry");
        command
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        // The registry takes every REGISTRY_* variable as a config override.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                command.env_remove(key);
            }
        }
        let child = command.spawn().expect("start docker-registry");
        let mut registry = Registry { child, port, dir };
        registry.wait_ready().then_some(registry)
    }

    /// Whether the registry listens (false: its port was taken).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.log();
                if log.contains("address already in use") {
                    return false;
                }
                panic!("docker-registry exited ({status}): {log}");
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's own file for a blob.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256");
        self.dir.path().join(format!(
            "storage/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An image written as an OCI layout.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest's bytes and descriptor.
    pub manifest: Vec<u8>,
    pub manifest_descriptor: Descriptor,
    pub config: Vec<u8>,
    pub config_descriptor: Descriptor,
    /// Layer bytes (gzip) and descriptors.
    pub layers: Vec<(Vec<u8>, Descriptor)>,
}

impl Image {
    /// Every blob: config first, then layers.
    pub fn blobs(&self) -> Vec<(Vec<u8>, Descriptor)> {
        let mut out = vec![(self.config.clone(), self.config_descriptor.clone())];
        out.extend(self.layers.iter().cloned());
        out
    }
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: sha256_digest(bytes),
        size: bytes.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
    }
}

/// gzip of `content` (skopeo keeps gzip layers as they are; it would
/// compress anything else on the way to a registry).
pub fn gzip(content: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(content).expect("gzip");
    encoder.finish().expect("gzip")
}

/// Deterministic filler bytes, different per `seed`.
pub fn filler(seed: u8, len: usize) -> Vec<u8> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// An image for `platform` whose layers are gzip of the given contents.
pub fn image(platform: &Platform, layer_contents: &[Vec<u8>]) -> Image {
    let layers: Vec<(Vec<u8>, Descriptor)> = layer_contents
        .iter()
        .map(|content| {
            let bytes = gzip(content);
            let d = descriptor(media::OCI_LAYER_GZIP, &bytes);
            (bytes, d)
        })
        .collect();
    let diff_ids: Vec<String> = layer_contents.iter().map(|c| sha256_digest(c)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config");
    let config_descriptor = descriptor(media::OCI_CONFIG, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": config_descriptor,
        "layers": layers.iter().map(|(_, d)| d).collect::<Vec<_>>(),
    }))
    .expect("manifest");
    let mut manifest_descriptor = descriptor(media::OCI_MANIFEST, &manifest);
    manifest_descriptor.platform = Some(platform.clone());
    Image {
        manifest,
        manifest_descriptor,
        config,
        config_descriptor,
        layers,
    }
}

fn write_blob(layout: &Path, bytes: &[u8]) {
    let digest = sha256_digest(bytes);
    let path = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write blob");
}

fn write_index(layout: &Path, tag: &str, top: &Descriptor) {
    let mut top = top.clone();
    top.platform = None;
    top.annotations
        .insert("org.opencontainers.image.ref.name".into(), tag.into());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).expect("index"),
    )
    .expect("index.json");
}

/// Writes `image` as an OCI layout at `layout` tagged `tag`.
pub fn write_layout(layout: &Path, tag: &str, image: &Image) {
    for (bytes, _) in image.blobs() {
        write_blob(layout, &bytes);
    }
    write_blob(layout, &image.manifest);
    write_index(layout, tag, &image.manifest_descriptor);
}

/// Writes several images under one OCI index (a multi-platform image);
/// the index's bytes.
pub fn write_multi_layout(layout: &Path, tag: &str, images: &[Image]) -> Vec<u8> {
    for image in images {
        for (bytes, _) in image.blobs() {
            write_blob(layout, &bytes);
        }
        write_blob(layout, &image.manifest);
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": images.iter().map(|i| &i.manifest_descriptor).collect::<Vec<_>>(),
    }))
    .expect("index");
    write_blob(layout, &index);
    write_index(layout, tag, &descriptor(media::OCI_INDEX, &index));
    index
}

/// `skopeo copy oci:LAYOUT:TAG docker://DEST` with digests preserved.
pub fn skopeo_copy(layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet", "--preserve-digests"])
        .args(extra)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .env_remove("REGISTRY_AUTH_FILE")
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo copy to {dest} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes an image, writes its layout and pushes it as `dest`
/// (`127.0.0.1:PORT/NAME:TAG`) with skopeo.
pub fn populate(dest: &str, platform: &Platform, layers: &[Vec<u8>], extra: &[&str]) -> Image {
    let image = image(platform, layers);
    let layout = tempfile::tempdir().expect("tempdir");
    write_layout(layout.path(), "t", &image);
    skopeo_copy(layout.path(), "t", dest, extra);
    image
}

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 server: one request per connection (`Connection: close`).

/// A request as the test server saw it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The raw request, to forward upstream.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        for (k, v) in &self.headers {
            if k.eq_ignore_ascii_case("connection") {
                continue;
            }
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// What the handler answers.
#[derive(Debug, Clone, Default)]
pub struct HttpResponse {
    /// The raw response: status line, headers, body.
    pub raw: Vec<u8>,
    /// Close the connection after this many bytes of `raw`.
    pub cut_at: Option<usize>,
}

impl HttpResponse {
    pub fn new(status: u16, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        let mut raw = format!("HTTP/1.1 {status} X\r\n").into_bytes();
        for (k, v) in headers {
            raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        raw.extend_from_slice(
            format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        raw.extend_from_slice(body);
        HttpResponse { raw, cut_at: None }
    }

    /// Where the body starts in `raw`.
    pub fn body_start(&self) -> usize {
        self.raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(self.raw.len(), |i| i + 4)
    }

    pub fn status(&self) -> u16 {
        let line = String::from_utf8_lossy(&self.raw[..self.raw.len().min(20)]).into_owned();
        line.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

type Handler = dyn Fn(&HttpRequest) -> HttpResponse + Send + Sync;

/// A test HTTP server on 127.0.0.1, stopped and joined when dropped.
pub struct Server {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Every request seen, in order.
    pub seen: Arc<Mutex<Vec<HttpRequest>>>,
}

impl Server {
    pub fn start(handler: impl Fn(&HttpRequest) -> HttpResponse + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let stop = stop.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                std::thread::scope(|scope| {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let handler = handler.clone();
                        let seen = seen.clone();
                        scope.spawn(move || serve(stream, &*handler, &seen));
                    }
                });
            })
        };
        Server {
            port,
            stop,
            thread: Some(thread),
            seen,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<HttpRequest> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, handler: &Handler, seen: &Mutex<Vec<HttpRequest>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let Some(request) = read_request(&mut reader) else {
        return;
    };
    seen.lock().expect("seen").push(request.clone());
    let response = handler(&request);
    let mut stream = stream;
    let end = response
        .cut_at
        .unwrap_or(response.raw.len())
        .min(response.raw.len());
    let _ = stream.write_all(&response.raw[..end]);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

fn read_request(reader: &mut impl BufRead) -> Option<HttpRequest> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut request = HttpRequest {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = request
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0; len];
        reader.read_exact(&mut body).ok()?;
        request.body = body;
    } else if request
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        request.body = read_chunked(reader)?;
        request
            .headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("transfer-encoding"));
        let len = request.body.len().to_string();
        request.headers.push(("Content-Length".into(), len));
    }
    Some(request)
}

fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// Sends `request` to `upstream` and returns its whole answer.
pub fn forward(upstream: &str, request: &HttpRequest) -> HttpResponse {
    let mut stream = TcpStream::connect(upstream).expect("connect upstream");
    stream
        .write_all(&request.to_bytes())
        .expect("send upstream");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read upstream");
    HttpResponse { raw, cut_at: None }
}

/// A proxy in front of `upstream` that lets `fault` change answers.
pub fn proxy(
    upstream: String,
    fault: impl Fn(&HttpRequest, HttpResponse) -> HttpResponse + Send + Sync + 'static,
) -> Server {
    Server::start(move |request| fault(request, forward(&upstream, request)))
}

/// `path` is a blob GET of `digest`.
pub fn is_blob_get(request: &HttpRequest, digest: &str) -> bool {
    request.method == "GET" && request.target.contains(&format!("/blobs/{digest}"))
}

/// Makes a CA and a server certificate for 127.0.0.1 signed by it:
/// `(ca.crt, server.crt, server.key)`.
pub fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
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
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=hafen test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}
