//! `portcullis push`, `pull`, `sign` and `keygen`: publishing policy
//! modules to OCI registries and signing them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::Args;

use crate::commands::{CliError, RegistryArgs};
use crate::registry::ModuleResolver;
use portcullis_engine::{CompiledModule, Limits, PolicyEngine};
use portcullis_oci::{PolicyRef, PublicKey, SigningKey};

/// Deadline of the metadata call made to annotate a pushed module.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct PushCommand {
    /// The module: a component or a core module (`.wasm`).
    pub module: PathBuf,

    /// Where to push it: `oci://REGISTRY/REPOSITORY:TAG`.
    pub reference: String,

    /// Extra manifest annotations, `KEY=VALUE`; repeatable.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,

    /// Sign the pushed manifest with this private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,

    /// The module is compiled once to ask its metadata for the
    /// annotations; the compilation is cached like the server's.
    #[command(flatten)]
    pub module_cache: super::ModuleCacheArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct PullCommand {
    /// `oci://REGISTRY/REPOSITORY:TAG` or `...@sha256:DIGEST`.
    pub reference: String,

    /// Where to write the module.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,

    /// Refuse the module unless a signature verifies with one of these
    /// public keys (PEM); repeatable.
    #[arg(long = "verify-key", value_name = "FILE")]
    pub verify_keys: Vec<PathBuf>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct SignCommand {
    /// The module to sign: `oci://REGISTRY/REPOSITORY:TAG` (the manifest
    /// the tag names now is what is signed) or `...@sha256:DIGEST`.
    pub reference: String,

    /// The private key (PEM: PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`,
    /// ECDSA P-256).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct KeygenCommand {
    /// Writes `PREFIX.key` (private, owner-only) and `PREFIX.pub`.
    pub prefix: PathBuf,
}

fn reference(text: &str) -> Result<PolicyRef, CliError> {
    text.parse().map_err(CliError::usage)
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::failure)
}

impl PushCommand {
    pub fn execute(self) -> Result<(), CliError> {
        let target = reference(&self.reference)?;
        let bytes =
            portcullis_engine::read_bounded(&self.module, portcullis_engine::MAX_MODULE_BYTES)
                .map_err(CliError::usage)?;
        let key = self
            .sign_key
            .as_deref()
            .map(SigningKey::load)
            .transpose()
            .map_err(CliError::usage)?;
        let mut annotations = describe(&self.module, &bytes, self.module_cache.dir())?;
        for pair in &self.annotations {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                CliError::usage(anyhow!("--annotation {pair:?}: expected KEY=VALUE"))
            })?;
            annotations.insert(key.to_string(), value.to_string());
        }
        let resolver = ModuleResolver::new(self.registry.settings(None));
        let registry = resolver.registry().map_err(CliError::usage)?;
        let size = bytes.len();
        let runtime = runtime()?;
        runtime.block_on(async {
            let started = std::time::Instant::now();
            let manifest = registry
                .push(&target, bytes, annotations)
                .await
                .map_err(CliError::failure)?;
            println!(
                "pushed {} ({size} bytes) to {target} as {manifest} in {:.0} ms",
                self.module.display(),
                started.elapsed().as_secs_f64() * 1000.0
            );
            if let Some(key) = &key {
                let (signed, tag) = registry
                    .sign(&target.at_digest(&manifest), key)
                    .await
                    .map_err(CliError::failure)?;
                println!(
                    "signed {signed} with {} (tag {tag})",
                    key.public().fingerprint
                );
            }
            Ok(())
        })
    }
}

/// Annotations from the module's own metadata: its name, version, the
/// contract it was built against and the resources it declares.
fn describe(
    path: &std::path::Path,
    bytes: &[u8],
    cache_dir: Option<PathBuf>,
) -> Result<BTreeMap<String, String>, CliError> {
    let engine = PolicyEngine::with_cache(cache_dir.as_deref()).map_err(CliError::failure)?;
    let module = CompiledModule::compile(&engine, bytes)
        .with_context(|| format!("{} is not a policy module", path.display()))
        .map_err(CliError::usage)?;
    let limits = Limits {
        timeout: METADATA_TIMEOUT,
        memory: portcullis_engine::DEFAULT_MEMORY,
    };
    let name: Arc<str> = path
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or("module")
        .into();
    let runtime = runtime()?;
    let metadata = runtime
        .block_on(module.metadata(&name, limits))
        .with_context(|| format!("{} did not answer its metadata call", path.display()))
        .map_err(CliError::usage)?;
    let mut annotations = BTreeMap::from([
        (portcullis_oci::ANNOTATION_POLICY.to_string(), metadata.name),
        (
            portcullis_oci::ANNOTATION_VERSION.to_string(),
            metadata.version,
        ),
        (
            portcullis_oci::ANNOTATION_CONTRACT.to_string(),
            module.contract.to_string(),
        ),
        (
            portcullis_oci::ANNOTATION_RESOURCES.to_string(),
            metadata.resources.join(","),
        ),
    ]);
    if let Some(file) = path.file_name().and_then(|f| f.to_str()) {
        annotations.insert(
            portcullis_oci::ANNOTATION_TITLE.to_string(),
            file.to_string(),
        );
    }
    Ok(annotations)
}

impl PullCommand {
    pub fn execute(self) -> Result<(), CliError> {
        let source = reference(&self.reference)?;
        let keys = self
            .verify_keys
            .iter()
            .map(|path| PublicKey::load(path))
            .collect::<Result<Vec<_>, _>>()
            .map_err(CliError::usage)?;
        let resolver = ModuleResolver::new(self.registry.settings(None));
        let registry = resolver.registry().map_err(CliError::usage)?;
        let runtime = runtime()?;
        let pulled = runtime
            .block_on(registry.pull(&source, &keys))
            .map_err(CliError::failure)?;
        std::fs::write(&self.output, &pulled.bytes)
            .with_context(|| format!("cannot write {}", self.output.display()))
            .map_err(CliError::failure)?;
        let resolved = &pulled.resolved;
        println!(
            "pulled {source} ({} bytes, manifest {}, module {}){} to {}",
            resolved.size,
            resolved.manifest,
            resolved.layer,
            resolved
                .verified_with
                .as_ref()
                .map(|key| format!(", signed by {key}"))
                .unwrap_or_default(),
            self.output.display()
        );
        for (key, value) in &resolved.annotations {
            println!("  {key}: {value}");
        }
        Ok(())
    }
}

impl SignCommand {
    pub fn execute(self) -> Result<(), CliError> {
        let target = reference(&self.reference)?;
        let key = SigningKey::load(&self.key).map_err(CliError::usage)?;
        let resolver = ModuleResolver::new(self.registry.settings(None));
        let registry = resolver.registry().map_err(CliError::usage)?;
        let runtime = runtime()?;
        let (manifest, tag) = runtime
            .block_on(registry.sign(&target, &key))
            .map_err(CliError::failure)?;
        println!(
            "signed {target} ({manifest}) with {} (tag {tag})",
            key.public().fingerprint
        );
        Ok(())
    }
}

impl KeygenCommand {
    pub fn execute(self) -> Result<(), CliError> {
        let (private, public) = portcullis_oci::generate_key().map_err(CliError::failure)?;
        let with_extension = |extension: &str| {
            let mut path = self.prefix.clone().into_os_string();
            path.push(extension);
            PathBuf::from(path)
        };
        let (private_path, public_path) = (with_extension(".key"), with_extension(".pub"));
        write_private(&private_path, &private)?;
        std::fs::write(&public_path, public)
            .with_context(|| format!("cannot write {}", public_path.display()))
            .map_err(CliError::failure)?;
        let fingerprint = PublicKey::load(&public_path)
            .map_err(CliError::failure)?
            .fingerprint;
        println!(
            "wrote {} and {} ({fingerprint})",
            private_path.display(),
            public_path.display()
        );
        Ok(())
    }
}

/// Writes a private key readable by its owner only, never over an
/// existing file.
fn write_private(path: &std::path::Path, text: &str) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))
        .map_err(CliError::usage)?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
        .map_err(CliError::failure)
}
