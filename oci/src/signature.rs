//! Keyed signatures in cosign's layout, so `cosign verify --key` accepts
//! what `portcullis sign` makes and the server accepts what `cosign sign
//! --key` makes (with a key in PEM form).
//!
//! A signature is ECDSA P-256 with SHA-256, ASN.1 DER, base64, over a
//! simple-signing payload naming the manifest digest. It is stored as a
//! layer (media type `application/vnd.dev.cosign.simplesigning.v1+json`,
//! the payload as its blob, the signature in the annotation
//! `dev.cosignproject.cosign/signature`) of the manifest tagged
//! `sha256-HEX.sig` in the same repository.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Media type of a signature layer.
pub(crate) const SIGNATURE_LAYER_MEDIA_TYPE: &str =
    "application/vnd.dev.cosign.simplesigning.v1+json";
/// Annotation carrying the signature.
pub(crate) const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The payload type cosign writes and checks.
const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Largest key file read.
const MAX_KEY_BYTES: u64 = 64 << 10;

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is not an ECDSA P-256 {kind} key in PEM form ({message}); cosign's encrypted key \
         format is not read: export the key as PKCS#8 PEM or make one with `portcullis keygen`",
        .path.display()
    )]
    Format {
        path: PathBuf,
        kind: &'static str,
        message: String,
    },
    #[error("cannot encode the key: {0}")]
    Encode(String),
}

/// A public key signatures are checked with, and the fingerprint that
/// names it in logs and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    /// `sha256:` of the key's DER encoding, first 16 hex digits.
    pub fingerprint: String,
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (what `cosign generate-key-pair` writes as
    /// `cosign.pub`).
    ///
    /// # Errors
    /// A [`KeyError`] naming the file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_key(path)?;
        Self::from_pem(&text).map_err(|message| KeyError::Format {
            path: path.to_path_buf(),
            kind: "public",
            message,
        })
    }

    /// Parses a PEM `PUBLIC KEY`.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let key = VerifyingKey::from_public_key_pem(text.trim()).map_err(|err| err.to_string())?;
        Ok(Self::from_key(key))
    }

    fn from_key(key: VerifyingKey) -> Self {
        let der = key
            .to_public_key_der()
            .map(|der| der.as_bytes().to_vec())
            .unwrap_or_default();
        let hash = hex::encode(Sha256::digest(der));
        Self {
            key,
            fingerprint: format!("sha256:{}", &hash[..16]),
        }
    }

    /// The PEM form.
    ///
    /// # Errors
    /// When the key cannot be encoded (never for a valid key).
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|err| KeyError::Encode(err.to_string()))
    }

    /// Whether `signature` (base64 DER) signs `payload` with this key.
    pub(crate) fn verifies(&self, payload: &[u8], signature: &str) -> bool {
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
            return false;
        };
        let Ok(signature) = Signature::from_der(&der) else {
            return false;
        };
        self.key.verify(payload, &signature).is_ok()
    }
}

/// A private key to sign with.
pub struct SigningKey {
    key: p256::ecdsa::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public().fingerprint)
            .finish()
    }
}

impl SigningKey {
    /// Reads a PEM `PRIVATE KEY` (PKCS#8) or `EC PRIVATE KEY` (SEC1, what
    /// `openssl ecparam -genkey` writes).
    ///
    /// # Errors
    /// A [`KeyError`] naming the file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_key(path)?;
        let format_error = |message: String| KeyError::Format {
            path: path.to_path_buf(),
            kind: "private",
            message,
        };
        let pem_text = text.trim();
        let key = if pem_text.contains("BEGIN EC PRIVATE KEY") {
            let secret = p256::SecretKey::from_sec1_pem(pem_text)
                .map_err(|err| format_error(err.to_string()))?;
            p256::ecdsa::SigningKey::from(secret)
        } else {
            p256::ecdsa::SigningKey::from_pkcs8_pem(pem_text)
                .map_err(|err| format_error(err.to_string()))?
        };
        Ok(Self { key })
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey::from_key(*self.key.verifying_key())
    }

    /// The base64 DER signature of `payload`.
    pub(crate) fn sign(&self, payload: &[u8]) -> String {
        let signature: Signature = self.key.sign(payload);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }
}

/// A new key pair as PEM: (PKCS#8 private key, public key).
///
/// # Errors
/// When encoding fails (never for a fresh key).
pub fn generate_key() -> Result<(String, String), KeyError> {
    let key = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|err| KeyError::Encode(err.to_string()))?
        .to_string();
    let public = PublicKey::from_key(*key.verifying_key()).to_pem()?;
    Ok((private, public))
}

fn read_key(path: &Path) -> Result<String, KeyError> {
    let read_error = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if !metadata.is_file() || metadata.len() > MAX_KEY_BYTES {
        return Err(KeyError::Format {
            path: path.to_path_buf(),
            kind: "PEM",
            message: format!("not a regular file of at most {MAX_KEY_BYTES} bytes"),
        });
    }
    std::fs::read_to_string(path).map_err(read_error)
}

#[derive(Serialize, Deserialize)]
struct Payload {
    critical: Critical,
    optional: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Serialize, Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Serialize, Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The simple-signing payload for `manifest` in `repository`
/// (`REGISTRY/REPOSITORY`).
pub(crate) fn payload(repository: &str, manifest: &str) -> Vec<u8> {
    let payload = Payload {
        critical: Critical {
            identity: Identity {
                docker_reference: repository.to_string(),
            },
            image: Image {
                docker_manifest_digest: manifest.to_string(),
            },
            kind: PAYLOAD_TYPE.to_string(),
        },
        optional: None,
    };
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// Checks that a payload is a signature of `manifest`.
///
/// # Errors
/// What the payload says instead.
pub(crate) fn check_payload(bytes: &[u8], manifest: &str) -> Result<(), String> {
    let payload: Payload = serde_json::from_slice(bytes)
        .map_err(|err| format!("the payload is not a simple-signing document: {err}"))?;
    if payload.critical.kind != PAYLOAD_TYPE {
        return Err(format!(
            "the payload's type is {:?}, not {PAYLOAD_TYPE:?}",
            payload.critical.kind
        ));
    }
    if payload.critical.image.docker_manifest_digest != manifest {
        return Err(format!(
            "the payload signs {}, not {manifest}",
            payload.critical.image.docker_manifest_digest
        ));
    }
    Ok(())
}

/// The tag a manifest's signatures are kept under.
pub(crate) fn signature_tag(manifest: &str) -> String {
    manifest.replacen(':', "-", 1) + ".sig"
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str =
        "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn key_pair() -> (SigningKey, PublicKey) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (private, public) = generate_key().expect("generated");
        let path = dir.path().join("key.pem");
        std::fs::write(&path, private).expect("write");
        let key = SigningKey::load(&path).expect("loads");
        let public = PublicKey::from_pem(&public).expect("parses");
        assert_eq!(key.public(), public);
        (key, public)
    }

    #[test]
    fn signatures_verify_with_the_key_and_only_with_it() {
        let (key, public) = key_pair();
        let (_, other) = key_pair();
        let payload = payload("127.0.0.1:5000/policies/labels", MANIFEST);
        let signature = key.sign(&payload);
        assert!(public.verifies(&payload, &signature));
        assert!(!other.verifies(&payload, &signature));
        let mut altered = payload.clone();
        altered[10] ^= 1;
        assert!(!public.verifies(&altered, &signature));
        assert!(!public.verifies(&payload, "not base64!"));
        assert!(public.fingerprint.starts_with("sha256:") && public.fingerprint.len() == 23);
    }

    #[test]
    fn payloads_name_the_manifest_as_cosign_does() {
        let payload = payload("r.example/p", MANIFEST);
        let value: serde_json::Value = serde_json::from_slice(&payload).expect("json");
        assert_eq!(
            value["critical"]["image"]["docker-manifest-digest"],
            MANIFEST
        );
        assert_eq!(
            value["critical"]["identity"]["docker-reference"],
            "r.example/p"
        );
        assert_eq!(value["critical"]["type"], PAYLOAD_TYPE);
        assert!(value["optional"].is_null());
        assert!(check_payload(&payload, MANIFEST).is_ok());
        let other = MANIFEST.replace('0', "f");
        let err = check_payload(&payload, &other).expect_err("other manifest");
        assert!(err.contains("not sha256:f"), "{err}");
        assert_eq!(
            signature_tag(MANIFEST),
            "sha256-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.sig"
        );
    }

    #[test]
    fn keys_in_other_forms_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cosign.key");
        std::fs::write(
            &path,
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nabc\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
        )
        .expect("write");
        let err = SigningKey::load(&path).expect_err("encrypted");
        assert!(err.to_string().contains("cosign.key"), "{err}");
        let err = PublicKey::load(&path).expect_err("not public");
        assert!(err.to_string().contains("public"), "{err}");
        assert!(PublicKey::load(dir.path()).is_err());
    }
}
