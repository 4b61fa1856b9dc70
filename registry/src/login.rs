//! `hafen login` and `hafen logout`: credentials checked against the
//! registry before they are stored in hafen's auth file.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use crate::client::{Client, ClientOptions};
use crate::credentials::{self, normalize_key, Credential, CredentialsError};
use crate::error::RegistryError;
use crate::reference::{check_registry, ReferenceErrorKind};

/// A login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The registry argument is not `host[:port]`.
    #[error("invalid registry {input:?}: {kind}")]
    BadRegistry {
        /// What was given.
        input: String,
        /// What is wrong with it.
        kind: ReferenceErrorKind,
    },
    /// There is no terminal to ask on and the password was not piped.
    #[error(
        "no terminal to ask for the {0} on: pass -u USER and the password with --password-stdin"
    )]
    NoTerminal(&'static str),
    /// The password read was empty.
    #[error("the password is empty")]
    EmptyPassword,
    /// Reading or writing credentials failed.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The registry refused the credentials or could not be asked.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// What `hafen logout` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logout {
    /// The registry, normalized.
    pub registry: String,
    /// Whether hafen's own file had credentials for it.
    pub removed: bool,
    /// Other files (docker's, podman's) that still hold credentials for it.
    pub still_in: Vec<PathBuf>,
}

/// `REGISTRY` as typed (`docker.io`, `https://index.docker.io/v1/`,
/// `localhost:5000`) in the form references use.
pub fn normalize_registry(registry: &str) -> Result<String, LoginError> {
    let normalized = normalize_key(registry);
    check_registry(&normalized).map_err(|kind| LoginError::BadRegistry {
        input: registry.to_owned(),
        kind,
    })?;
    Ok(normalized)
}

/// `hafen login REGISTRY [-u USER] [--password-stdin]`: asks for what is
/// missing (the password without echo, on a terminal), checks the
/// credential against the registry and stores it in hafen's auth file.
/// The normalized registry.
pub fn login(
    options: &ClientOptions,
    registry: &str,
    username: Option<String>,
    password_stdin: bool,
) -> Result<String, LoginError> {
    let registry = normalize_registry(registry)?;
    let terminal = std::io::stdin().is_terminal();
    let username = match username {
        Some(username) => username,
        None if terminal && !password_stdin => {
            eprint!("Username for {registry}: ");
            credentials::read_line_from_stdin("user name")?
        }
        None => return Err(LoginError::NoTerminal("user name")),
    };
    let password = if password_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| CredentialsError::Prompt {
                what: "password",
                source,
            })?;
        text.trim_end_matches(['\n', '\r']).to_owned()
    } else if terminal {
        credentials::prompt_password("Password: ")?
    } else {
        return Err(LoginError::NoTerminal("password"));
    };
    if password.is_empty() {
        return Err(LoginError::EmptyPassword);
    }
    store_checked(options, &registry, &Credential { username, password })
}

/// Checks `credential` against `registry` and, if the registry takes it,
/// stores it in hafen's auth file. The normalized registry.
pub fn store_checked(
    options: &ClientOptions,
    registry: &str,
    credential: &Credential,
) -> Result<String, LoginError> {
    let registry = normalize_registry(registry)?;
    Client::new(options.clone()).check_credential(&registry, credential)?;
    options.auth.store(&registry, credential)?;
    Ok(registry)
}

/// `hafen logout REGISTRY`: removes the registry from hafen's auth file.
pub fn logout(options: &ClientOptions, registry: &str) -> Result<Logout, LoginError> {
    let registry = normalize_registry(registry)?;
    let removed = options.auth.remove(&registry)?;
    let still_in = options.auth.others_holding(&registry);
    Ok(Logout {
        registry,
        removed,
        still_in,
    })
}
