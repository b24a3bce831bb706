//! The registry client: resolves a reference to a verified module file in
//! the store (pulling only what the store lacks), pushes modules, and signs
//! them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use oci_client::Client;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::client::{Config, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;

use crate::artifact;
use crate::credentials::Credentials;
use crate::reference::PolicyRef;
use crate::signature::{self, PublicKey, SigningKey};
use crate::store::{self, ManifestRecord, Store, StoreError};

/// Largest manifest, signature payload or config read.
const MAX_SMALL_BLOB: u64 = 1 << 20;

/// How the client reaches registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Where blobs and what references resolved to are kept.
    pub store_dir: PathBuf,
    pub credentials: Credentials,
    /// PEM certificates trusted besides the system's, for private registries.
    pub ca_bundle: Option<Vec<u8>>,
    /// Registries (`host:port`) spoken to over plain HTTP.
    pub plain_http: Vec<String>,
    /// Longest one registry operation (a manifest, a blob) may take.
    pub timeout: Duration,
    /// Largest module accepted.
    pub max_module_bytes: u64,
}

/// Why a reference could not be resolved, pushed or signed. Every variant
/// names the reference.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference}: the registry cannot be reached")]
    Unreachable {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("{reference}: the registry did not answer within {seconds} s")]
    TimedOut { reference: String, seconds: u64 },
    #[error("{reference}: the registry refused")]
    Refused {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("{reference} is not a policy module: {message}")]
    NotAModule { reference: String, message: String },
    #[error("{reference}: the module is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        reference: String,
        size: u64,
        limit: u64,
    },
    #[error("{reference}: {message}; refused")]
    Tampered { reference: String, message: String },
    #[error("{reference} is not signed: no signature at tag {tag}")]
    Unsigned { reference: String, tag: String },
    #[error("{reference}: no signature verifies with the configured keys ({keys}): {reasons}")]
    BadSignature {
        reference: String,
        keys: String,
        reasons: String,
    },
    #[error("{reference}: cannot use the content store")]
    Store {
        reference: String,
        #[source]
        source: StoreError,
    },
}

/// A module resolved to a file in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The manifest digest in service.
    pub manifest: String,
    /// The module layer's digest: what its bytes hash to.
    pub layer: String,
    /// The module in the store.
    pub path: PathBuf,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
    /// Fingerprint of the key its signature verified with, when one was asked.
    pub verified_with: Option<String>,
    /// Whether the registry was asked at all (a digest already in the store
    /// needs no network).
    pub contacted_registry: bool,
    /// The registry could not be reached and a tag was taken as it last
    /// resolved: the module may be older than the tag is now.
    pub stale: bool,
}

/// A module fetched by [`Registry::pull`].
#[derive(Debug)]
pub struct Pulled {
    pub resolved: Resolved,
    pub bytes: Vec<u8>,
}

/// A client of OCI registries with a content store.
pub struct Registry {
    client: Client,
    options: RegistryOptions,
    store: Store,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A client with `options`.
    pub fn new(options: RegistryOptions) -> Self {
        crate::install_crypto_provider();
        let protocol = if options.plain_http.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(options.plain_http.clone())
        };
        let config = ClientConfig {
            protocol,
            extra_root_certificates: options
                .ca_bundle
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            connect_timeout: Some(options.timeout),
            read_timeout: Some(options.timeout),
            ..ClientConfig::default()
        };
        Self {
            client: Client::new(config),
            store: Store::new(options.store_dir.clone()),
            options,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The manifest digest `reference` names now: its own digest, or what
    /// the registry says its tag points at.
    ///
    /// # Errors
    /// The registry failing or refusing.
    pub async fn current_digest(&self, reference: &PolicyRef) -> Result<String, RegistryError> {
        if let Some(digest) = reference.digest() {
            return Ok(digest.to_string());
        }
        let auth = self.auth(reference);
        self.call(
            reference,
            self.client.fetch_manifest_digest(reference.oci(), &auth),
        )
        .await
    }

    /// Resolves `reference` to a module file in the store, verified against
    /// the manifest's digests and, when `keys` are given, against a
    /// signature by one of them. A digest already in the store (and
    /// verified with one of `keys`) needs no network; a tag whose registry
    /// cannot be reached resolves to what it resolved to last, marked stale.
    ///
    /// # Errors
    /// A [`RegistryError`] naming the reference.
    pub async fn resolve(
        &self,
        reference: &PolicyRef,
        keys: &[PublicKey],
    ) -> Result<Resolved, RegistryError> {
        let name = reference.to_string();
        let mut stale = false;
        let mut contacted = false;
        let manifest = match reference.digest() {
            Some(digest) => digest.to_string(),
            None => match self.current_digest(reference).await {
                Ok(digest) => {
                    contacted = true;
                    digest
                }
                Err(
                    error @ (RegistryError::Unreachable { .. } | RegistryError::TimedOut { .. }),
                ) => match self.store.tag(&name) {
                    Some(digest) => {
                        tracing::warn!(
                            reference = %name,
                            manifest = %digest,
                            error = %error,
                            "registry unreachable; using the digest this tag resolved to last"
                        );
                        stale = true;
                        digest
                    }
                    None => return Err(error),
                },
                Err(error) => return Err(error),
            },
        };

        let known = self.store.manifest(&manifest).filter(|record| {
            self.store.has_blob(&record.layer)
                && (keys.is_empty()
                    || keys
                        .iter()
                        .any(|key| record.verified_with.contains(&key.fingerprint)))
        });
        let record = match known {
            Some(record) => record,
            None => {
                contacted = true;
                self.fetch(reference, &manifest, keys).await?
            }
        };
        if reference.tag().is_some() && !stale {
            self.store
                .put_tag(&name, &manifest)
                .map_err(|source| store_error(&name, source))?;
        }
        let verified_with = keys
            .iter()
            .find(|key| record.verified_with.contains(&key.fingerprint))
            .map(|key| key.fingerprint.clone());
        let path = self
            .store
            .blob_path(&record.layer)
            .map_err(|source| store_error(&name, source))?;
        Ok(Resolved {
            manifest,
            layer: record.layer,
            path,
            size: record.size,
            annotations: record.annotations,
            verified_with,
            contacted_registry: contacted,
            stale,
        })
    }

    /// Resolves `reference` (as [`Registry::resolve`]) and reads the module.
    ///
    /// # Errors
    /// A [`RegistryError`] naming the reference.
    pub async fn pull(
        &self,
        reference: &PolicyRef,
        keys: &[PublicKey],
    ) -> Result<Pulled, RegistryError> {
        let resolved = self.resolve(reference, keys).await?;
        let bytes = std::fs::read(&resolved.path).map_err(|source| {
            store_error(
                &reference.to_string(),
                StoreError::Write {
                    path: resolved.path.clone(),
                    source,
                },
            )
        })?;
        if store::sha256(&bytes) != resolved.layer {
            return Err(RegistryError::Tampered {
                reference: reference.to_string(),
                message: format!("the stored module no longer hashes to {}", resolved.layer),
            });
        }
        Ok(Pulled { resolved, bytes })
    }

    /// Pushes `module` to `reference` in the Wasm artifact layout with
    /// `annotations`. Returns the manifest digest.
    ///
    /// # Errors
    /// A [`RegistryError`] naming the reference.
    pub async fn push(
        &self,
        reference: &PolicyRef,
        module: Vec<u8>,
        annotations: BTreeMap<String, String>,
    ) -> Result<String, RegistryError> {
        let created = now_rfc3339();
        let layer_digest = store::sha256(&module);
        let config = artifact::config(&created, &layer_digest, artifact::is_component(&module));
        let layers = [ImageLayer::new(
            module,
            artifact::LAYER_MEDIA_TYPE.to_string(),
            None,
        )];
        let config = Config::new(config, artifact::CONFIG_MEDIA_TYPE.to_string(), None);
        let manifest = OciImageManifest::build(
            &layers,
            &config,
            Some(artifact::annotations(annotations, &created)),
        );
        let auth = self.auth(reference);
        self.call(
            reference,
            self.client
                .push(reference.oci(), &layers, config, &auth, Some(manifest)),
        )
        .await?;
        self.current_digest(&reference.at_tag(reference.tag().unwrap_or("latest")))
            .await
            .or_else(|error| match reference.digest() {
                Some(digest) => Ok(digest.to_string()),
                None => Err(error),
            })
    }

    /// Signs the manifest `reference` names now with `key`, adding the
    /// signature to those already under its signature tag. Returns the
    /// manifest digest and the signature tag.
    ///
    /// # Errors
    /// A [`RegistryError`] naming the reference.
    pub async fn sign(
        &self,
        reference: &PolicyRef,
        key: &SigningKey,
    ) -> Result<(String, String), RegistryError> {
        let manifest = self.current_digest(reference).await?;
        let payload = signature::payload(&reference.repository_name(), &manifest);
        let signed = key.sign(&payload);
        let tag = signature::signature_tag(&manifest);
        let target = reference.at_tag(&tag);
        let auth = self.auth(reference);

        // Earlier signatures stay: another key's signature must not be lost.
        let mut layers: Vec<ImageLayer> = Vec::new();
        if let Some(existing) = self.signature_manifest(&target).await? {
            for layer in &existing.layers {
                if layer.media_type != signature::SIGNATURE_LAYER_MEDIA_TYPE {
                    continue;
                }
                let data = self.small_blob(&target, layer).await?;
                layers.push(ImageLayer::new(
                    data,
                    layer.media_type.clone(),
                    layer.annotations.clone(),
                ));
            }
        }
        let annotation =
            BTreeMap::from([(signature::SIGNATURE_ANNOTATION.to_string(), signed.clone())]);
        let already = layers.iter().any(|layer| {
            layer.data.as_ref() == payload.as_slice()
                && layer.annotations.as_ref() == Some(&annotation)
        });
        if !already {
            layers.push(ImageLayer::new(
                payload,
                signature::SIGNATURE_LAYER_MEDIA_TYPE.to_string(),
                Some(annotation),
            ));
        }
        let diff_ids: Vec<String> = layers.iter().map(|l| store::sha256(&l.data)).collect();
        let config = serde_json::json!({
            "architecture": "",
            "os": "",
            "created": "0001-01-01T00:00:00Z",
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "config": {},
        });
        let config = Config::oci_v1(serde_json::to_vec(&config).unwrap_or_default(), None);
        self.call(
            reference,
            self.client.push(target.oci(), &layers, config, &auth, None),
        )
        .await?;
        Ok((manifest, tag))
    }

    /// Pulls and checks the manifest, the signature and the module.
    async fn fetch(
        &self,
        reference: &PolicyRef,
        manifest: &str,
        keys: &[PublicKey],
    ) -> Result<ManifestRecord, RegistryError> {
        let name = reference.to_string();
        let pinned = reference.at_digest(manifest);
        let auth = self.auth(reference);
        let (body, digest) = self
            .call(
                reference,
                self.client.pull_manifest_raw(
                    pinned.oci(),
                    &auth,
                    &[
                        OCI_IMAGE_MEDIA_TYPE,
                        oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
                    ],
                ),
            )
            .await?;
        if store::sha256(&body) != manifest || digest != manifest {
            return Err(RegistryError::Tampered {
                reference: name,
                message: format!("the manifest served does not hash to {manifest}"),
            });
        }
        let parsed: OciImageManifest =
            serde_json::from_slice(&body).map_err(|err| RegistryError::NotAModule {
                reference: name.clone(),
                message: format!("the manifest is not an OCI image manifest: {err}"),
            })?;
        let modules: Vec<&OciDescriptor> = parsed
            .layers
            .iter()
            .filter(|layer| artifact::is_module_layer(&layer.media_type))
            .collect();
        let [layer] = modules.as_slice() else {
            return Err(RegistryError::NotAModule {
                reference: name,
                message: format!(
                    "expected exactly one layer of media type {} (found {} among {} layers: {})",
                    artifact::LAYER_MEDIA_TYPE,
                    modules.len(),
                    parsed.layers.len(),
                    parsed
                        .layers
                        .iter()
                        .map(|l| l.media_type.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        if size > self.options.max_module_bytes {
            return Err(RegistryError::TooLarge {
                reference: name,
                size,
                limit: self.options.max_module_bytes,
            });
        }

        let mut verified_with = self
            .store
            .manifest(manifest)
            .map(|record| record.verified_with)
            .unwrap_or_default();
        if !keys.is_empty() {
            let key = self.verify(reference, manifest, keys).await?;
            if !verified_with.contains(&key) {
                verified_with.push(key);
            }
        }

        if !self.store.has_blob(&layer.digest) {
            let bytes = self.blob(&pinned, reference, layer, size).await?;
            self.store
                .put_blob(&layer.digest, &bytes)
                .map_err(|source| match source {
                    StoreError::DigestMismatch { expected, actual } => RegistryError::Tampered {
                        reference: name.clone(),
                        message: format!("the module layer {expected} hashes to {actual}"),
                    },
                    other => store_error(&name, other),
                })?;
        }
        let record = ManifestRecord {
            layer: layer.digest.clone(),
            size,
            annotations: parsed.annotations.clone().unwrap_or_default(),
            verified_with,
        };
        self.store
            .put_manifest(manifest, &record)
            .map_err(|source| store_error(&name, source))?;
        Ok(record)
    }

    /// Finds a signature of `manifest` by one of `keys`; returns that key's
    /// fingerprint.
    async fn verify(
        &self,
        reference: &PolicyRef,
        manifest: &str,
        keys: &[PublicKey],
    ) -> Result<String, RegistryError> {
        let tag = signature::signature_tag(manifest);
        let target = reference.at_tag(&tag);
        let Some(signatures) = self.signature_manifest(&target).await? else {
            return Err(RegistryError::Unsigned {
                reference: reference.to_string(),
                tag,
            });
        };
        let mut reasons = Vec::new();
        for layer in &signatures.layers {
            if layer.media_type != signature::SIGNATURE_LAYER_MEDIA_TYPE {
                continue;
            }
            let Some(signed) = layer
                .annotations
                .as_ref()
                .and_then(|a| a.get(signature::SIGNATURE_ANNOTATION))
            else {
                reasons.push("a signature layer without a signature".to_string());
                continue;
            };
            let payload = self.small_blob(&target, layer).await?;
            if let Err(reason) = signature::check_payload(&payload, manifest) {
                reasons.push(reason);
                continue;
            }
            match keys.iter().find(|key| key.verifies(&payload, signed)) {
                Some(key) => return Ok(key.fingerprint.clone()),
                None => reasons.push("a signature by another key".to_string()),
            }
        }
        if reasons.is_empty() {
            reasons.push("no signature layers".to_string());
        }
        Err(RegistryError::BadSignature {
            reference: reference.to_string(),
            keys: keys
                .iter()
                .map(|key| key.fingerprint.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            reasons: reasons.join("; "),
        })
    }

    /// The signature manifest at `target`, or `None` when there is none.
    async fn signature_manifest(
        &self,
        target: &PolicyRef,
    ) -> Result<Option<OciImageManifest>, RegistryError> {
        let auth = self.auth(target);
        let pulled = tokio::time::timeout(
            self.options.timeout,
            self.client.pull_manifest(target.oci(), &auth),
        )
        .await;
        match pulled {
            Err(_) => Err(self.timed_out(target)),
            Ok(Ok((OciManifest::Image(manifest), _))) => Ok(Some(manifest)),
            Ok(Ok((OciManifest::ImageIndex(_), _))) => Err(RegistryError::NotAModule {
                reference: target.to_string(),
                message: "the signature tag holds an index, not a manifest".to_string(),
            }),
            Ok(Err(error)) if is_not_found(&error) => Ok(None),
            Ok(Err(error)) => Err(classify(target, error)),
        }
    }

    /// A blob of at most `MAX_SMALL_BLOB` bytes.
    async fn small_blob(
        &self,
        target: &PolicyRef,
        layer: &OciDescriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        if size > MAX_SMALL_BLOB {
            return Err(RegistryError::TooLarge {
                reference: target.to_string(),
                size,
                limit: MAX_SMALL_BLOB,
            });
        }
        self.blob(target, target, layer, size).await
    }

    /// Pulls a blob of `target`, never holding more than its descriptor's
    /// size; the client checks it against the descriptor's digest. Errors
    /// name `name` (the reference as the operator wrote it).
    async fn blob(
        &self,
        target: &PolicyRef,
        name: &PolicyRef,
        layer: &OciDescriptor,
        size: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut out = Bounded::new(size);
        let pulled = self
            .call(name, self.client.pull_blob(target.oci(), layer, &mut out))
            .await;
        if out.overflowed {
            return Err(RegistryError::Tampered {
                reference: name.to_string(),
                message: format!(
                    "the blob {} is larger than its manifest says ({size} bytes)",
                    layer.digest
                ),
            });
        }
        pulled?;
        Ok(out.bytes)
    }

    fn auth(&self, reference: &PolicyRef) -> RegistryAuth {
        self.options.credentials.for_registry(reference.registry())
    }

    /// Runs one registry operation with the timeout, classifying failure.
    async fn call<T>(
        &self,
        reference: &PolicyRef,
        operation: impl Future<Output = Result<T, OciDistributionError>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(self.options.timeout, operation).await {
            Err(_) => Err(self.timed_out(reference)),
            Ok(result) => result.map_err(|error| classify(reference, error)),
        }
    }

    fn timed_out(&self, reference: &PolicyRef) -> RegistryError {
        RegistryError::TimedOut {
            reference: reference.to_string(),
            seconds: self.options.timeout.as_secs(),
        }
    }
}

/// Network failures and server errors are "unreachable" (a cached tag may
/// stand in); everything else is the registry's answer.
fn classify(reference: &PolicyRef, error: OciDistributionError) -> RegistryError {
    let reference = reference.to_string();
    let unreachable = match &error {
        OciDistributionError::RequestError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500,
        _ => false,
    };
    if unreachable {
        RegistryError::Unreachable {
            reference,
            source: error,
        }
    } else if matches!(error, OciDistributionError::DigestError(_)) {
        RegistryError::Tampered {
            reference,
            message: format!("a blob does not match its digest ({error})"),
        }
    } else {
        RegistryError::Refused {
            reference,
            source: error,
        }
    }
}

fn is_not_found(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, oci_client::errors::OciErrorCode::ManifestUnknown)),
        _ => false,
    }
}

fn store_error(reference: &str, source: StoreError) -> RegistryError {
    RegistryError::Store {
        reference: reference.to_string(),
        source,
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A buffer that refuses to grow past `limit`: a registry cannot make the
/// server hold more than the manifest promised.
struct Bounded {
    bytes: Vec<u8>,
    limit: u64,
    overflowed: bool,
}

impl Bounded {
    fn new(limit: u64) -> Self {
        Self {
            bytes: Vec::with_capacity(usize::try_from(limit.min(MAX_SMALL_BLOB)).unwrap_or(0)),
            limit,
            overflowed: false,
        }
    }
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if (self.bytes.len() + buf.len()) as u64 > self.limit {
            self.overflowed = true;
            return Poll::Ready(Err(std::io::Error::other(
                "the blob is larger than its descriptor says",
            )));
        }
        self.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
