//! The registry client: one HTTP session per registry (its scheme, TLS
//! roots, challenge, credentials and tokens), requests with authentication,
//! redirects and retries.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use url::Url;

use crate::auth::{parse_challenges, BearerChallenge, Challenge, Scopes, Token};
use crate::credentials::{AuthFiles, Credential};
use crate::error::{RegistryError, TransportError};
use crate::reference::{api_host, Reference};
use crate::tls;

/// How often and how long to retry a request that failed in a way that may
/// pass (a dropped connection, 408, 429, 5xx).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The wait before the second try; it doubles for each further one.
    pub initial_delay: Duration,
    /// The longest wait between tries (also the cap on `Retry-After`).
    pub max_delay: Duration,
    /// No new try starts after this much time since the first.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
            max_total: Duration::from_secs(120),
        }
    }
}

/// What a [`Client`] may do and where it finds credentials and CAs.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Registries (`host` or `host:port`) that may be talked to over plain
    /// HTTP when HTTPS fails. Loopback registries (`localhost`,
    /// 127.0.0.0/8, `::1`) always may.
    pub insecure: Vec<String>,
    /// certs.d directories: `DIR/HOST[:PORT]/*.crt` are trusted CAs for
    /// that registry, besides the system roots.
    pub certs_dirs: Vec<PathBuf>,
    /// Where credentials come from.
    pub auth: AuthFiles,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Blobs transferred at once by the `*_blobs` calls.
    pub parallel: usize,
    /// Blobs larger than this are pushed in chunks of this size.
    pub chunk_size: u64,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time a read may wait for data before the connection counts as
    /// dropped.
    pub read_timeout: Duration,
}

impl Default for ClientOptions {
    /// No credentials, no certs.d directories, default retries: a client
    /// that depends on nothing of this user's environment.
    fn default() -> ClientOptions {
        ClientOptions {
            insecure: Vec::new(),
            certs_dirs: Vec::new(),
            auth: AuthFiles::none(),
            retry: RetryPolicy::default(),
            parallel: 3,
            chunk_size: 32 << 20,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
        }
    }
}

impl ClientOptions {
    /// The user's credential files and certs.d directories (see
    /// [`AuthFiles::from_env`] and [`tls::default_certs_dirs`]).
    pub fn from_env() -> ClientOptions {
        ClientOptions {
            auth: AuthFiles::from_env(),
            certs_dirs: tls::default_certs_dirs(),
            insecure: insecure_from(std::env::var(INSECURE_ENV).ok().as_deref()),
            ..ClientOptions::default()
        }
    }
}

/// The variable naming registries the user allows over plain HTTP
/// (`host[:port]`, comma- or space-separated), besides loopback ones.
pub const INSECURE_ENV: &str = "HAFEN_INSECURE_REGISTRIES";

/// The registries [`INSECURE_ENV`]'s value names.
fn insecure_from(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split([',', ' '])
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A registry client, shared by threads (`&Client` is all a transfer
/// needs).
#[derive(Debug)]
pub struct Client {
    pub(crate) options: ClientOptions,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

/// What the client knows about one registry.
#[derive(Debug)]
pub(crate) struct Session {
    /// The registry as references name it (`docker.io`, `localhost:5000`).
    pub(crate) registry: String,
    /// `https://HOST[:PORT]` or `http://…` of its API.
    pub(crate) base: Url,
    agent: ureq::Agent,
    challenge: Mutex<Option<Challenge>>,
    /// An explicit credential (a login check) instead of the auth files.
    explicit: Option<Credential>,
    credentials: Mutex<HashMap<Option<String>, Option<Credential>>>,
    tokens: Mutex<HashMap<Scopes, Token>>,
}

/// A request body that can be sent again (for a retry after 401).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
}

/// One request: method, URL, headers, body and the scopes it needs.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) method: &'static str,
    pub(crate) url: Url,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Body<'a>,
    pub(crate) scopes: Scopes,
    /// For errors: what this request is for (`GET busybox:1.36`).
    pub(crate) what: String,
}

/// Longest chain of redirects followed.
const MAX_REDIRECTS: u32 = 5;
/// Largest error or token answer read.
const SMALL_BODY_LIMIT: u64 = 1 << 20;

impl Client {
    /// A client with `options`; nothing is contacted until a call needs
    /// it.
    pub fn new(options: ClientOptions) -> Client {
        Client {
            options,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The options the client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Checks `credential` against `registry` the way `hafen login` does:
    /// `GET /v2/` with the registry's challenge answered (a Basic
    /// registry gets the credential directly, a Bearer one a token request
    /// with it). Nothing is stored.
    pub fn check_credential(
        &self,
        registry: &str,
        credential: &Credential,
    ) -> Result<(), RegistryError> {
        let session = self.new_session(registry, Some(credential.clone()))?;
        let request = session.request(
            "GET",
            "/v2/",
            Scopes::none(),
            format!("login to {registry}"),
        );
        let response = self.send(&session, request)?;
        match response.status() {
            200..=299 => Ok(()),
            _ => Err(self.status_error(&session, response, &format!("login to {registry}"), None)),
        }
    }

    /// Checks that `registry` answers as a v2 registry (with the stored
    /// credentials, if it wants some).
    pub fn ping(&self, registry: &str) -> Result<(), RegistryError> {
        let session = self.session(registry)?;
        let request = session.request("GET", "/v2/", Scopes::none(), format!("ping {registry}"));
        let what = request.what.clone();
        let response = self.send_retrying(&session, || Ok(request.clone_empty()))?;
        match response.status() {
            200..=299 => Ok(()),
            _ => Err(self.status_error(&session, response, &what, None)),
        }
    }

    /// The session for `registry`, made (and the registry pinged) on first
    /// use.
    pub(crate) fn session(&self, registry: &str) -> Result<Arc<Session>, RegistryError> {
        // The lock is held across the first ping, so parallel transfers
        // wait for one ping instead of each making its own.
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(session) = sessions.get(registry) {
            return Ok(session.clone());
        }
        let session = Arc::new(self.new_session(registry, None)?);
        sessions.insert(registry.to_owned(), session.clone());
        Ok(session)
    }

    /// Connects to `registry`: HTTPS, or plain HTTP when HTTPS fails and
    /// the registry is loopback or marked insecure; records the challenge
    /// `GET /v2/` answers with.
    fn new_session(
        &self,
        registry: &str,
        explicit: Option<Credential>,
    ) -> Result<Session, RegistryError> {
        let config = tls::client_config(registry, &self.options.certs_dirs)?;
        let agent = ureq::AgentBuilder::new()
            .tls_config(config)
            .redirects(0)
            .timeout_connect(self.options.connect_timeout)
            .timeout_read(self.options.read_timeout)
            .timeout_write(self.options.read_timeout)
            .user_agent(concat!("hafen/", env!("CARGO_PKG_VERSION")))
            .build();
        let host = api_host(registry);
        let make = |scheme: &str| -> Result<Session, RegistryError> {
            let base = Url::parse(&format!("{scheme}://{host}/")).map_err(|e| {
                RegistryError::Protocol {
                    what: format!("connect to {registry}"),
                    registry: registry.into(),
                    message: format!("is not a usable host name: {e}"),
                }
            })?;
            Ok(Session {
                registry: registry.to_owned(),
                base,
                agent: agent.clone(),
                challenge: Mutex::new(None),
                explicit: explicit.clone(),
                credentials: Mutex::new(HashMap::new()),
                tokens: Mutex::new(HashMap::new()),
            })
        };
        let https = make("https")?;
        let https_error = match self.probe(&https) {
            Ok(challenge) => {
                *lock(&https.challenge) = challenge;
                return Ok(https);
            }
            Err(err) => err,
        };
        let may_fall_back = matches!(
            https_error,
            RegistryError::Tls { .. } | RegistryError::Connection { .. }
        ) || matches!(https_error, RegistryError::Unreachable { .. } if is_loopback(registry));
        if !may_fall_back || !self.is_insecure(registry) {
            return Err(https_error);
        }
        let http = make("http")?;
        match self.probe(&http) {
            Ok(challenge) => {
                *lock(&http.challenge) = challenge;
                Ok(http)
            }
            // What the user needs to hear is why HTTPS failed.
            Err(_) => Err(https_error),
        }
    }

    /// `GET /v2/` without credentials: the challenge, if the registry
    /// wants authentication. An answer that is not a v2 registry's is an
    /// error.
    fn probe(&self, session: &Session) -> Result<Option<Challenge>, RegistryError> {
        let what = format!("connect to {}", session.registry);
        let url = session.url("/v2/");
        let mut attempt = 0;
        let started = Instant::now();
        loop {
            attempt += 1;
            let result = session.agent.get(url.as_str()).call();
            let response = match result {
                Ok(response) | Err(ureq::Error::Status(_, response)) => response,
                Err(ureq::Error::Transport(transport)) => {
                    let err = self.transport_error(session, &what, attempt, transport);
                    // A refused connection or a TLS failure will not pass.
                    if matches!(err, RegistryError::Connection { .. })
                        && self.should_retry(attempt, started, None)
                    {
                        continue;
                    }
                    return Err(err);
                }
            };
            let status = response.status();
            let challenge = parse_challenges(response.all("www-authenticate"));
            let is_registry = response
                .header("docker-distribution-api-version")
                .is_some_and(|v| v.starts_with("registry/2"));
            match status {
                200..=299 => return Ok(None),
                401 => return Ok(challenge),
                404 if !is_registry => {
                    return Err(RegistryError::Protocol {
                        what,
                        registry: session.registry.clone(),
                        message: "has no registry API at /v2/: check the registry name".into(),
                    })
                }
                _ => {
                    let err = self.status_error(session, response, &what, None);
                    if err.is_transient() && self.should_retry(attempt, started, err.retry_after())
                    {
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    fn is_insecure(&self, registry: &str) -> bool {
        let host = host_of(registry);
        is_loopback(registry)
            || self
                .options
                .insecure
                .iter()
                .any(|entry| entry == registry || entry == host)
    }

    /// Sends `request`, answering auth challenges (once: a fresh token with
    /// the scope a 401 names) and following redirects for GET and HEAD
    /// (without credentials when they lead to another host). Any status
    /// comes back as a response except a 401 Hafen could not answer.
    pub(crate) fn send(
        &self,
        session: &Session,
        request: Request<'_>,
    ) -> Result<ureq::Response, RegistryError> {
        let mut url = request.url.clone();
        let mut redirects = 0;
        let mut reauthenticated = false;
        loop {
            let same_origin = url.origin() == session.base.origin();
            let mut call = session.agent.request(request.method, url.as_str());
            for (name, value) in &request.headers {
                call = call.set(name, value);
            }
            if same_origin {
                if let Some(header) = self.authorization(session, &request.scopes, &request.what)? {
                    call = call.set("Authorization", &header);
                }
            }
            let result = match request.body {
                Body::Empty => call.call(),
                Body::Bytes(bytes) => call.send_bytes(bytes),
            };
            let response = match result {
                Ok(response) | Err(ureq::Error::Status(_, response)) => response,
                Err(ureq::Error::Transport(transport)) => {
                    return Err(self.transport_error(session, &request.what, 1, transport))
                }
            };
            let status = response.status();
            if matches!(status, 301 | 302 | 303 | 307 | 308)
                && matches!(request.method, "GET" | "HEAD")
            {
                redirects += 1;
                let location = response.header("location").unwrap_or_default();
                let next = url
                    .join(location)
                    .ok()
                    .filter(|_| redirects <= MAX_REDIRECTS);
                let Some(next) = next else {
                    return Err(RegistryError::Protocol {
                        what: request.what.clone(),
                        registry: session.registry.clone(),
                        message: format!("sent a bad or endless redirect (to {location:?})"),
                    });
                };
                url = next;
                continue;
            }
            if status == 401 && same_origin && !reauthenticated {
                let challenge = parse_challenges(response.all("www-authenticate"));
                if self.reauthenticate(session, &request.scopes, challenge, &request.what)? {
                    reauthenticated = true;
                    continue;
                }
            }
            return Ok(response);
        }
    }

    /// `send`, tried again with backoff while it fails transiently
    /// (connections, 408, 429, 5xx). `make` builds each try's request.
    pub(crate) fn send_retrying<'b>(
        &self,
        session: &Session,
        mut make: impl FnMut() -> Result<Request<'b>, RegistryError>,
    ) -> Result<ureq::Response, RegistryError> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = make()?;
            let what = request.what.clone();
            let outcome = self.send(session, request).and_then(|response| {
                if matches!(response.status(), 408 | 429 | 500..=599) {
                    Err(self.status_error(session, response, &what, None))
                } else {
                    Ok(response)
                }
            });
            match outcome {
                Err(err)
                    if err.is_transient()
                        && self.should_retry(attempt, started, err.retry_after()) =>
                {
                    continue
                }
                Err(err) => return Err(err.after_attempts(attempt)),
                Ok(response) => return Ok(response),
            }
        }
    }

    /// Whether another try may start after `attempt` failed tries, and
    /// sleeps the backoff (or `retry_after`, capped) before it.
    pub(crate) fn should_retry(
        &self,
        attempt: u32,
        started: Instant,
        retry_after: Option<Duration>,
    ) -> bool {
        let policy = &self.options.retry;
        if attempt >= policy.attempts {
            return false;
        }
        let backoff = policy
            .initial_delay
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        let delay = retry_after.unwrap_or(backoff).min(policy.max_delay);
        if started.elapsed() + delay > policy.max_total {
            return false;
        }
        std::thread::sleep(delay);
        true
    }

    /// The `Authorization` header for a request needing `scopes`.
    pub(crate) fn authorization(
        &self,
        session: &Session,
        scopes: &Scopes,
        what: &str,
    ) -> Result<Option<String>, RegistryError> {
        let challenge = lock(&session.challenge).clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self
                .credential(session, scopes)?
                .map(|c| format!("Basic {}", c.basic()))),
            Some(Challenge::Bearer(bearer)) => {
                if let Some(token) = lock(&session.tokens).get(scopes) {
                    if token.is_fresh(Instant::now()) {
                        return Ok(Some(format!("Bearer {}", token.value)));
                    }
                }
                let token = self.fetch_token(session, &bearer, scopes, what)?;
                let header = format!("Bearer {}", token.value);
                lock(&session.tokens).insert(scopes.clone(), token);
                Ok(Some(header))
            }
        }
    }

    /// After a 401: records the registry's challenge and gets a new token
    /// for the scopes asked plus those it names. Whether the request
    /// should be sent again.
    fn reauthenticate(
        &self,
        session: &Session,
        scopes: &Scopes,
        challenge: Option<Challenge>,
        what: &str,
    ) -> Result<bool, RegistryError> {
        let had = match &challenge {
            Some(new) => lock(&session.challenge).replace(new.clone()),
            None => lock(&session.challenge).clone(),
        };
        match challenge {
            Some(Challenge::Bearer(bearer)) => {
                let wanted = scopes.merged(&bearer);
                let token = self.fetch_token(session, &bearer, &wanted, what)?;
                lock(&session.tokens).insert(scopes.clone(), token);
                Ok(true)
            }
            // A Basic registry: worth a retry only if credentials were not
            // sent the first time (the challenge was unknown then).
            Some(Challenge::Basic) => {
                Ok(had != Some(Challenge::Basic) && self.credential(session, scopes)?.is_some())
            }
            None => Ok(false),
        }
    }

    /// Asks a token endpoint for a token with `scopes`, with the
    /// credential when there is one (anonymously otherwise).
    fn fetch_token(
        &self,
        session: &Session,
        bearer: &BearerChallenge,
        scopes: &Scopes,
        what: &str,
    ) -> Result<Token, RegistryError> {
        let mut url = Url::parse(&bearer.realm).map_err(|e| RegistryError::Protocol {
            what: what.into(),
            registry: session.registry.clone(),
            message: format!("named a bad token endpoint {:?}: {e}", bearer.realm),
        })?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = &bearer.service {
                query.append_pair("service", service);
            }
            for scope in scopes.iter() {
                query.append_pair("scope", scope);
            }
        }
        let credential = self.credential(session, scopes)?;
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut call = session.agent.get(url.as_str());
            if let Some(credential) = &credential {
                call = call.set("Authorization", &format!("Basic {}", credential.basic()));
            }
            let response = match call.call() {
                Ok(response) | Err(ureq::Error::Status(_, response)) => response,
                Err(ureq::Error::Transport(transport)) => {
                    let err = self.transport_error(session, what, attempt, transport);
                    if err.is_transient() && self.should_retry(attempt, started, None) {
                        continue;
                    }
                    return Err(err);
                }
            };
            match response.status() {
                200 => {
                    let body = read_small(response);
                    let token = serde_json::from_slice(&body)
                        .ok()
                        .and_then(|json| Token::from_answer(&json, Instant::now()));
                    return token.ok_or_else(|| RegistryError::Protocol {
                        what: what.into(),
                        registry: session.registry.clone(),
                        message: format!(
                            "token endpoint {} answered without a token",
                            bearer.realm
                        ),
                    });
                }
                401 | 403 if credential.is_some() => {
                    return Err(RegistryError::WrongCredentials {
                        registry: session.registry.clone(),
                    })
                }
                401 | 403 => {
                    return Err(RegistryError::AuthRequired {
                        what: what.into(),
                        registry: session.registry.clone(),
                    })
                }
                _ => {
                    let err = self.status_error(session, response, what, None);
                    if err.is_transient() && self.should_retry(attempt, started, err.retry_after())
                    {
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// The credential for the repository `scopes` name first (namespace
    /// entries of auth files apply), looked up once per repository.
    fn credential(
        &self,
        session: &Session,
        scopes: &Scopes,
    ) -> Result<Option<Credential>, RegistryError> {
        if let Some(explicit) = &session.explicit {
            return Ok(Some(explicit.clone()));
        }
        let repository = scopes
            .iter()
            .next()
            .and_then(|s| s.strip_prefix("repository:"))
            .and_then(|s| s.rsplit_once(':'))
            .map(|(name, _)| name.to_owned());
        if let Some(found) = lock(&session.credentials).get(&repository) {
            return Ok(found.clone());
        }
        let found = self
            .options
            .auth
            .lookup(&session.registry, repository.as_deref())?;
        lock(&session.credentials).insert(repository, found.clone());
        Ok(found)
    }

    /// A transport failure as the error a user should see.
    pub(crate) fn transport_error(
        &self,
        session: &Session,
        what: &str,
        attempts: u32,
        transport: ureq::Transport,
    ) -> RegistryError {
        let kind = transport.kind();
        let source: TransportError = Box::new(transport);
        if tls::is_tls_error(source.as_ref()) {
            return RegistryError::Tls {
                registry: session.registry.clone(),
                certs_hint: tls::certs_hint(&self.options.certs_dirs),
                source,
            };
        }
        match kind {
            ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns => {
                RegistryError::Unreachable {
                    registry: session.registry.clone(),
                    source,
                }
            }
            _ => RegistryError::Connection {
                what: what.into(),
                registry: session.registry.clone(),
                attempts,
                source,
            },
        }
    }

    /// An unexpected answer as the error a user should see. `reference`
    /// turns a 404 into "not found".
    pub(crate) fn status_error(
        &self,
        session: &Session,
        response: ureq::Response,
        what: &str,
        reference: Option<&Reference>,
    ) -> RegistryError {
        let status = response.status();
        let registry = session.registry.clone();
        let insufficient_scope = matches!(
            parse_challenges(response.all("www-authenticate")),
            Some(Challenge::Bearer(BearerChallenge { error: Some(e), .. })) if e == "insufficient_scope"
        );
        let retry_after = response
            .header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let message = error_message(&read_small(response));
        match status {
            404 if reference.is_some() => RegistryError::NotFound {
                reference: reference.map(Reference::familiar).unwrap_or_default(),
                registry,
            },
            401 => match self.credential(session, &Scopes::none()) {
                // Authenticated, but the token does not reach this
                // repository: it is not ours to use (or does not exist).
                Ok(Some(_)) if insufficient_scope => RegistryError::Denied {
                    what: what.into(),
                    registry,
                },
                Ok(Some(_)) => RegistryError::WrongCredentials { registry },
                _ => RegistryError::AuthRequired {
                    what: what.into(),
                    registry,
                },
            },
            403 => RegistryError::Denied {
                what: what.into(),
                registry,
            },
            _ => RegistryError::Status {
                what: what.into(),
                registry,
                status,
                message,
                retry_after,
            },
        }
    }
}

impl Session {
    /// The HTTP agent (TLS roots of this registry, no redirects).
    pub(crate) fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// `base` + `path`.
    pub(crate) fn url(&self, path: &str) -> Url {
        // `path` always starts with /v2/, which joins as an absolute path.
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    /// A request for `path` with no body.
    pub(crate) fn request(
        &self,
        method: &'static str,
        path: &str,
        scopes: Scopes,
        what: String,
    ) -> Request<'static> {
        Request {
            method,
            url: self.url(path),
            headers: Vec::new(),
            body: Body::Empty,
            scopes,
            what,
        }
    }
}

impl Request<'_> {
    /// A copy (the body is borrowed, so copies are cheap).
    pub(crate) fn clone_empty(&self) -> Request<'_> {
        Request {
            method: self.method,
            url: self.url.clone(),
            headers: self.headers.clone(),
            body: self.body,
            scopes: self.scopes.clone(),
            what: self.what.clone(),
        }
    }
}

/// Runs `work` on each item, at most `workers` at once on scoped threads;
/// once an item has failed, no further one is started. Each item's result,
/// in order (`None`: never started).
pub(crate) fn in_parallel<T: Send, R: Send, E: Send>(
    workers: usize,
    items: Vec<T>,
    work: impl Fn(T) -> Result<R, E> + Sync,
) -> Vec<Option<Result<R, E>>> {
    let count = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<R, E>>>> = Mutex::new((0..count).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, count.max(1)) {
            scope.spawn(|| loop {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let Some((i, item)) = lock(&queue).next() else {
                    return;
                };
                let result = work(item);
                if result.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                lock(&results)[i] = Some(result);
            });
        }
    });
    results.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// Locks a mutex, taking over a poisoned one (its data stays consistent:
/// every critical section here is a single insert or read).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Up to [`SMALL_BODY_LIMIT`] bytes of a response body.
pub(crate) fn read_small(response: ureq::Response) -> Vec<u8> {
    let mut body = Vec::new();
    let _ = response
        .into_reader()
        .take(SMALL_BODY_LIMIT)
        .read_to_end(&mut body);
    body
}

/// The registry's explanation in an error body: the distribution spec's
/// `{"errors": [{"code", "message"}]}`, else the first line of the text.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(parsed) = serde_json::from_slice::<Errors>(body) {
        let parts: Vec<String> = parsed
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{} ({})", e.message, e.code),
                (true, _) => e.message.clone(),
                (false, true) => e.code.clone(),
            })
            .collect();
        return parts.join("; ");
    }
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(200).collect()
}

/// The host part of `host[:port]` (brackets kept for IPv6).
fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry
            .split_once(']')
            .map_or(registry, |(h, _)| &registry[..h.len() + 1]);
    }
    registry.split_once(':').map_or(registry, |(host, _)| host)
}

/// Whether `registry` is on this machine: `localhost`, 127.0.0.0/8, `::1`.
pub fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    if host == "localhost" {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #[test]
    fn insecure_registries_come_from_the_environment_variable() {
        assert_eq!(
            insecure_from(Some("reg.lan:5000, other.lan  third")),
            ["reg.lan:5000", "other.lan", "third"]
        );
        assert!(insecure_from(None).is_empty() && insecure_from(Some(" , ")).is_empty());
    }

    use super::*;

    #[test]
    fn loopback_registries() {
        for yes in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.9.8.7",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "docker.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[::2]:5000",
            "128.0.0.1",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }

    #[test]
    fn insecure_list_matches_registry_or_host() {
        let client = Client::new(ClientOptions {
            insecure: vec!["reg.lan".into(), "other.lan:5000".into()],
            ..ClientOptions::default()
        });
        assert!(client.is_insecure("reg.lan:5000"));
        assert!(client.is_insecure("reg.lan"));
        assert!(client.is_insecure("other.lan:5000"));
        assert!(!client.is_insecure("other.lan:6000"));
        assert!(!client.is_insecure("docker.io"));
        assert!(client.is_insecure("127.0.0.1:1"));
    }

    #[test]
    fn registry_error_bodies_become_messages() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(error_message(body), "manifest unknown (MANIFEST_UNKNOWN)");
        assert_eq!(
            error_message(b"Service Unavailable\nmore"),
            "Service Unavailable"
        );
        assert_eq!(error_message(b""), "");
    }

    #[test]
    fn backoff_is_bounded_by_attempts_and_total_time() {
        let client = Client::new(ClientOptions {
            retry: RetryPolicy {
                attempts: 3,
                initial_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
                max_total: Duration::from_secs(5),
            },
            ..ClientOptions::default()
        });
        let started = Instant::now();
        assert!(client.should_retry(1, started, None));
        assert!(client.should_retry(2, started, Some(Duration::from_secs(100))));
        assert!(!client.should_retry(3, started, None));
        let late = Instant::now() - Duration::from_secs(6);
        assert!(!client.should_retry(1, late, None));
    }
}
