//! Registry authentication: the `WWW-Authenticate` challenges a registry
//! answers with, and the scopes a Bearer token is asked for.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How a registry wants to be authenticated, from its 401 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`: send the user and password with every request.
    Basic,
    /// `Bearer realm="…",service="…"`: get a token from `realm`.
    Bearer(BearerChallenge),
}

/// A Bearer challenge's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerChallenge {
    /// The token endpoint.
    pub realm: String,
    /// The `service` parameter to pass to it.
    pub service: Option<String>,
    /// The scope the request needed, when the registry says.
    pub scope: Option<String>,
    /// `insufficient_scope`, `invalid_token`…, when the registry says.
    pub error: Option<String>,
}

/// One challenge of a header: its scheme and parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawChallenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl RawChallenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// The challenge of `WWW-Authenticate` header values Hafen can answer:
/// Bearer preferred over Basic; `None` when there is neither (or it is
/// malformed, e.g. a Bearer challenge without a realm).
pub fn parse_challenges<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    let mut basic = false;
    for header in headers {
        for raw in parse_header(header) {
            if raw.scheme.eq_ignore_ascii_case("bearer") {
                if let Some(realm) = raw.param("realm").filter(|r| !r.is_empty()) {
                    return Some(Challenge::Bearer(BearerChallenge {
                        realm: realm.to_owned(),
                        service: raw.param("service").map(str::to_owned),
                        scope: raw.param("scope").map(str::to_owned),
                        error: raw.param("error").map(str::to_owned),
                    }));
                }
            } else if raw.scheme.eq_ignore_ascii_case("basic") {
                basic = true;
            }
        }
    }
    basic.then_some(Challenge::Basic)
}

/// Splits a header value into challenges (RFC 9110 §11.6.1): a scheme
/// token, then comma-separated `key=value` or `key="quoted"` parameters;
/// a token followed by a space and no `=` starts the next challenge.
fn parse_header(header: &str) -> Vec<RawChallenge> {
    let mut out: Vec<RawChallenge> = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        let token_end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let token = &rest[..token_end];
        if token.is_empty() {
            break;
        }
        let after = rest[token_end..].trim_start();
        if let (Some(value_part), Some(current)) = (after.strip_prefix('='), out.last_mut()) {
            // A parameter of the current challenge.
            let (value, remaining) = parse_value(value_part.trim_start());
            current.params.push((token.to_owned(), value));
            rest = remaining;
        } else {
            out.push(RawChallenge {
                scheme: token.to_owned(),
                params: Vec::new(),
            });
            rest = after;
        }
    }
    out
}

/// A parameter value (quoted with `\` escapes, or a token) and the text
/// after it.
fn parse_value(text: &str) -> (String, &str) {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => return (value, &quoted[i + 1..]),
                other => value.push(other),
            }
        }
        (value, "")
    } else {
        let end = text.find([',', ' ', '\t']).unwrap_or(text.len());
        (text[..end].to_owned(), &text[end..])
    }
}

/// What a request needs access to, as token scopes
/// (`repository:NAME:pull`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scopes(BTreeSet<String>);

impl Scopes {
    /// No scope (`GET /v2/`, a login check).
    pub fn none() -> Scopes {
        Scopes::default()
    }

    /// Pull access to `repository`.
    pub fn pull(repository: &str) -> Scopes {
        Scopes::none().with(format!("repository:{repository}:pull"))
    }

    /// Pull and push access to `repository`.
    pub fn push(repository: &str) -> Scopes {
        Scopes::none().with(format!("repository:{repository}:pull,push"))
    }

    /// These scopes plus `scope`.
    pub fn with(mut self, scope: String) -> Scopes {
        self.0.insert(scope);
        self
    }

    /// These scopes plus the one a challenge named, if any.
    pub fn merged(&self, challenge: &BearerChallenge) -> Scopes {
        let mut out = self.clone();
        if let Some(scope) = &challenge.scope {
            // One parameter may carry several scopes, space-separated.
            out.0.extend(
                scope
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        out
    }

    /// Each scope, in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// A Bearer token and when to stop using it.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) value: String,
    pub(crate) expires: Instant,
}

impl Token {
    /// From a token endpoint's answer: `token` (or OAuth2's
    /// `access_token`) and `expires_in` seconds (60 when absent, per the
    /// distribution spec), used up to 10 seconds before it ends.
    pub(crate) fn from_answer(body: &serde_json::Value, now: Instant) -> Option<Token> {
        let value = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())?;
        let lifetime = body
            .get("expires_in")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(60)
            .max(1);
        let usable = Duration::from_secs(lifetime.saturating_sub(10).max(lifetime / 2));
        Some(Token {
            value: value.to_owned(),
            expires: now + usable,
        })
    }

    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        now < self.expires
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer(BearerChallenge {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
            error: None,
        })
    }

    #[test]
    fn docker_hub_challenge() {
        let header = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        assert_eq!(
            parse_challenges([header]),
            Some(bearer(
                "https://auth.docker.io/token",
                Some("registry.docker.io"),
                Some("repository:library/busybox:pull")
            ))
        );
    }

    #[test]
    fn insufficient_scope_and_escapes_and_spacing() {
        let header = r#"bearer  realm = "https://a/t\"x" , service=reg, error="insufficient_scope",scope="repository:a:pull,push repository:b:pull""#;
        let Some(Challenge::Bearer(challenge)) = parse_challenges([header]) else {
            panic!("bearer expected");
        };
        assert_eq!(challenge.realm, "https://a/t\"x");
        assert_eq!(challenge.service.as_deref(), Some("reg"));
        assert_eq!(challenge.error.as_deref(), Some("insufficient_scope"));
        let scopes = Scopes::pull("c").merged(&challenge);
        assert_eq!(
            scopes.iter().collect::<Vec<_>>(),
            [
                "repository:a:pull,push",
                "repository:b:pull",
                "repository:c:pull"
            ]
        );
    }

    #[test]
    fn basic_and_several_challenges() {
        assert_eq!(
            parse_challenges([r#"Basic realm="Registry Realm""#]),
            Some(Challenge::Basic)
        );
        // Bearer wins, in one header or across headers.
        let both = r#"Basic realm="r", Bearer realm="https://t/token",service="s""#;
        assert_eq!(
            parse_challenges([both]),
            Some(bearer("https://t/token", Some("s"), None))
        );
        assert_eq!(
            parse_challenges(["Basic realm=x", r#"Bearer realm="https://t""#]),
            Some(bearer("https://t", None, None))
        );
    }

    #[test]
    fn unusable_challenges_are_none() {
        assert_eq!(parse_challenges([]), None);
        assert_eq!(parse_challenges([""]), None);
        assert_eq!(parse_challenges([r#"Negotiate abc"#]), None);
        // A Bearer challenge without a realm cannot be answered.
        assert_eq!(parse_challenges([r#"Bearer service="s""#]), None);
        assert_eq!(
            parse_challenges([r#"Bearer realm="unterminated"#]),
            Some(bearer("unterminated", None, None))
        );
    }

    #[test]
    fn token_answers() {
        let now = Instant::now();
        let token = Token::from_answer(&serde_json::json!({"token": "t", "expires_in": 300}), now)
            .expect("token");
        assert_eq!(token.value, "t");
        assert!(token.is_fresh(now + Duration::from_secs(289)));
        assert!(!token.is_fresh(now + Duration::from_secs(291)));
        let oauth = Token::from_answer(&serde_json::json!({"access_token": "a"}), now)
            .expect("access_token");
        assert_eq!(oauth.value, "a");
        assert!(oauth.is_fresh(now + Duration::from_secs(49)));
        assert!(Token::from_answer(&serde_json::json!({"token": ""}), now).is_none());
        assert!(Token::from_answer(&serde_json::json!({}), now).is_none());
    }
}
