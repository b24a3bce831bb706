//! The compiled-module cache on disk: a second start deserializes instead of
//! compiling, a corrupt entry is discarded and rebuilt (never used), and a
//! cache directory others can write to is not used.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use portcullis_e2e::{Json, Server, fixture, path_str, write_default_config};

/// `reload.<field>` of `GET /policies`.
fn reload_counter(server: &Server, field: &str) -> Result<u64> {
    let policies = server.policies()?;
    policies["reload"][field]
        .as_u64()
        .with_context(|| format!("reload.{field} in {policies}"))
}

fn start(cache: &Path) -> Result<Server> {
    let dir = path_str(cache)?.to_owned();
    Server::start_with(&["--cache-dir", &dir], write_default_config)
}

/// The standard test config still decides as it should.
fn ensure_decides(server: &Server) -> Result<()> {
    let allowed = server.review("/validate", &fixture("pod-allowed.json")?)?;
    ensure!(allowed.allowed(), "allowed pod denied\n{allowed}");
    let denied = server.review("/validate", &fixture("pod-denied.json")?)?;
    ensure!(
        !denied.allowed() && denied.message().contains("evil.io/x:1"),
        "denied pod\n{denied}"
    );
    Ok(())
}

fn entries(cache: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(cache)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    files.sort();
    Ok(files)
}

#[test]
fn a_second_start_deserializes_and_a_corrupt_entry_is_rebuilt() -> Result<()> {
    let cache_dir = tempfile::tempdir()?;
    let cache = cache_dir.path().join("modules");

    let first = start(&cache)?;
    ensure!(
        reload_counter(&first, "modulesCompiled")? == 3,
        "{}",
        first.policies()?
    );
    ensure!(
        reload_counter(&first, "modulesFromDiskCache")? == 0,
        "{}",
        first.policies()?
    );
    ensure_decides(&first)?;
    drop(first);
    let written = entries(&cache)?;
    ensure!(
        written.len() == 3,
        "expected 3 cache entries, found {written:?}"
    );
    let mode = std::fs::metadata(&cache)?.permissions().mode() & 0o777;
    ensure!(
        mode == 0o700,
        "the cache directory is {mode:o}, expected 700"
    );

    let second = start(&cache)?;
    ensure!(
        reload_counter(&second, "modulesCompiled")? == 0,
        "{}",
        second.policies()?
    );
    ensure!(
        reload_counter(&second, "modulesFromDiskCache")? == 3,
        "{}",
        second.policies()?
    );
    ensure_decides(&second)?;
    let metrics = second.metrics()?;
    ensure!(
        metrics.contains("portcullis_module_disk_cache_hits_total 3"),
        "{metrics}"
    );
    drop(second);

    // Flip one byte in the middle of one entry: the checksum catches it.
    let victim = &written[0];
    let mut bytes = std::fs::read(victim)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(victim, &bytes)?;
    let third = start(&cache)?;
    ensure!(
        reload_counter(&third, "modulesCompiled")? == 1,
        "{}",
        third.policies()?
    );
    ensure!(
        reload_counter(&third, "modulesFromDiskCache")? == 2,
        "{}",
        third.policies()?
    );
    ensure_decides(&third)?;
    ensure!(
        third
            .logs()
            .contains("discarding a compiled module from the cache")
            && third.logs().contains("checksum mismatch"),
        "the corrupt entry was not reported\n{}",
        third.logs()
    );
    ensure!(
        std::fs::read(victim)? != bytes,
        "the corrupt entry was not rebuilt"
    );
    Ok(())
}

#[test]
fn a_cache_directory_others_can_write_is_not_used() -> Result<()> {
    let cache_dir = tempfile::tempdir()?;
    let cache = cache_dir.path().join("shared");
    std::fs::create_dir(&cache)?;
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777))?;
    let server = start(&cache)?;
    ensure!(
        reload_counter(&server, "modulesCompiled")? == 3,
        "{}",
        server.policies()?
    );
    ensure!(
        server.logs().contains("is writable by others"),
        "no warning about the unsafe cache\n{}",
        server.logs()
    );
    ensure!(
        entries(&cache)?.is_empty(),
        "entries were written to an unsafe directory"
    );
    ensure_decides(&server)?;
    let _: Json = server.policies()?;
    Ok(())
}

#[test]
fn eval_and_test_share_the_cache_and_can_do_without_it() -> Result<()> {
    let paths = portcullis_e2e::paths()?;
    let dir = tempfile::tempdir()?;
    let config = write_default_config(&paths, dir.path())?;
    let review = portcullis_e2e::fixtures_dir().join("pod-denied.json");
    let cache = dir.path().join("cache");
    let eval = |extra: &[&str]| -> Result<portcullis_e2e::CliOutput> {
        let mut args = vec![
            "eval",
            "--config",
            path_str(&config)?,
            "--review",
            path_str(&review)?,
        ];
        args.extend_from_slice(extra);
        portcullis_e2e::run_cli(&paths.bin, &args, None, portcullis_e2e::CLI_TIMEOUT)
    };
    let out = eval(&["--no-module-cache"])?;
    ensure!(
        out.code() == Some(0) && out.stdout.contains("evil.io/x:1"),
        "{out}"
    );
    ensure!(!cache.exists(), "--no-module-cache writes no cache");

    let out = eval(&["--cache-dir", path_str(&cache)?])?;
    ensure!(
        out.code() == Some(0) && out.stdout.contains("evil.io/x:1"),
        "{out}"
    );
    let written = entries(&cache)?;
    ensure!(!written.is_empty(), "eval stored the modules it compiled");

    // A second run reads the entries the first stored.
    let out = eval(&["--cache-dir", path_str(&cache)?])?;
    ensure!(
        out.code() == Some(0) && out.stdout.contains("evil.io/x:1"),
        "{out}"
    );
    ensure!(entries(&cache)? == written, "nothing recompiled or added");
    Ok(())
}
