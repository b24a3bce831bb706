//! Registry logins from a Docker `config.json`: the file `docker login`
//! writes, and the `.dockerconfigjson` key of a Kubernetes
//! `kubernetes.io/dockerconfigjson` Secret.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// Largest credentials file read.
const MAX_BYTES: u64 = 1 << 20;

/// Why the credentials file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read registry credentials {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry credentials {} are larger than {MAX_BYTES} bytes", .path.display())]
    TooLarge { path: PathBuf },
    #[error("invalid registry credentials {}: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
}

/// Logins by registry host. Registries not listed are accessed anonymously.
#[derive(Clone, Default)]
pub struct Credentials {
    by_registry: HashMap<String, RegistryAuth>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets themselves.
        f.debug_struct("Credentials")
            .field("registries", &self.by_registry.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Credentials {
    /// No logins.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Reads a Docker `config.json`.
    ///
    /// # Errors
    /// A [`CredentialsError`] naming the file and, for a bad entry, the
    /// registry (never the secret).
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let read_error = |source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        if !metadata.is_file() {
            return Err(CredentialsError::Invalid {
                path: path.to_path_buf(),
                message: "not a regular file".to_string(),
            });
        }
        if metadata.len() > MAX_BYTES {
            return Err(CredentialsError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        Self::parse(&text).map_err(|message| CredentialsError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses the JSON of a Docker `config.json`.
    ///
    /// # Errors
    /// What is wrong, naming the registry of a bad entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: ConfigFile = serde_json::from_str(text).map_err(|err| err.to_string())?;
        let mut by_registry = HashMap::new();
        for (key, entry) in file.auths {
            let registry = registry_host(&key);
            let auth = entry
                .into_auth()
                .map_err(|message| format!("auths[{key:?}]: {message}"))?;
            by_registry.insert(registry, auth);
        }
        Ok(Self { by_registry })
    }

    /// The login for `registry` (`host` or `host:port`).
    pub fn for_registry(&self, registry: &str) -> RegistryAuth {
        self.by_registry
            .get(registry)
            .cloned()
            .unwrap_or(RegistryAuth::Anonymous)
    }
}

impl Entry {
    fn into_auth(self) -> Result<RegistryAuth, String> {
        if let Some(token) = self.registrytoken {
            return Ok(RegistryAuth::Bearer(token));
        }
        if let (Some(username), Some(password)) = (&self.username, &self.password) {
            return Ok(RegistryAuth::Basic(username.clone(), password.clone()));
        }
        let Some(auth) = self.auth else {
            return Err(
                "expected \"auth\", \"username\" and \"password\", or \"registrytoken\""
                    .to_string(),
            );
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "\"auth\" is not base64".to_string())?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| "\"auth\" is not UTF-8".to_string())?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| "\"auth\" must encode USERNAME:PASSWORD".to_string())?;
        Ok(RegistryAuth::Basic(
            username.to_string(),
            password.to_string(),
        ))
    }
}

/// `https://host:port/v1/` and `host:port` both name `host:port`.
fn registry_host(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    without_scheme
        .split('/')
        .next()
        .unwrap_or(without_scheme)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(auth: &RegistryAuth) -> Option<(&str, &str)> {
        match auth {
            RegistryAuth::Basic(user, password) => Some((user, password)),
            _ => None,
        }
    }

    #[test]
    fn docker_config_entries_become_logins() {
        // "alice:s3cret:with:colons" in base64.
        let credentials = Credentials::parse(
            r#"{"auths": {
                "https://127.0.0.1:5000/v1/": {"auth": "YWxpY2U6czNjcmV0OndpdGg6Y29sb25z"},
                "registry.example": {"username": "bob", "password": "pw"},
                "tokens.example": {"registrytoken": "abc"}
            }}"#,
        )
        .expect("valid");
        assert_eq!(
            basic(&credentials.for_registry("127.0.0.1:5000")),
            Some(("alice", "s3cret:with:colons"))
        );
        assert_eq!(
            basic(&credentials.for_registry("registry.example")),
            Some(("bob", "pw"))
        );
        assert!(matches!(
            credentials.for_registry("tokens.example"),
            RegistryAuth::Bearer(token) if token == "abc"
        ));
        assert!(matches!(
            credentials.for_registry("elsewhere.example"),
            RegistryAuth::Anonymous
        ));
        assert!(!format!("{credentials:?}").contains("pw"));
    }

    #[test]
    fn bad_entries_name_the_registry_not_the_secret() {
        let err = Credentials::parse(r#"{"auths": {"r.example": {"auth": "bm9jb2xvbg=="}}}"#)
            .expect_err("no colon");
        assert!(
            err.contains("r.example") && err.contains("USERNAME:PASSWORD"),
            "{err}"
        );
        let err = Credentials::parse(r#"{"auths": {"r.example": {}}}"#).expect_err("empty");
        assert!(err.contains("r.example"), "{err}");
        assert!(Credentials::parse("not json").is_err());
    }
}
