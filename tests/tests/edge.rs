//! The HTTP edge under pressure: graceful shutdown (SIGTERM drains the
//! reviews in flight, then exit 0), the API server's `?timeout=` (answered
//! before it), and the bounded evaluation queue (503 beyond it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use portcullis_e2e::{
    Paths, Proto, Server, block_on, fixture, https_client, metric_value, repo_root, rss_bytes,
    yaml_str,
};

/// Each review spends this long in a policy (an endless loop cut at its
/// deadline, answered as allowed by `onError: allow`): long enough that the
/// reviews are surely in flight when SIGTERM arrives.
const SPIN_MS: u64 = 1500;
/// Reviews in flight when SIGTERM is sent.
const IN_FLIGHT: usize = 8;

fn misbehave_module() -> Result<PathBuf> {
    let module = repo_root().join("target/wasm32-wasip1/policy/misbehave.wasm");
    ensure!(
        module.exists(),
        "missing {}: run `make build` first",
        module.display()
    );
    Ok(module)
}

/// `spin` must keep holding its slot on every call here, however often it
/// times out: these tests are about the edge, not the circuit breaker.
const NO_BREAKER: &[&str] = &["--breaker-failures", "0"];

/// A config with one policy, `spin`, that loops until its deadline of
/// `timeout_ms` and is then handled as `on_error` says.
fn spin_config(timeout_ms: u64, on_error: &str) -> impl FnOnce(&Paths, &Path) -> Result<PathBuf> {
    let on_error = on_error.to_owned();
    move |_: &Paths, dir: &Path| {
        let module = misbehave_module()?;
        let yaml = format!(
            "policies:\n  - name: spin\n    module: {}\n    timeoutMs: {timeout_ms}\n    onError: {on_error}\n    settings: {{ behaviour: loop }}\n",
            yaml_str(module.to_str().context("module path is not UTF-8")?)
        );
        let path = dir.join("config.yaml");
        std::fs::write(&path, yaml)?;
        Ok(path)
    }
}

/// Posts `review` to `url` on a thread of its own; join to get the answer.
fn post_in_background(
    server: &Server,
    proto: Proto,
    url: &str,
    review: &serde_json::Value,
) -> std::thread::JoinHandle<Result<(reqwest::StatusCode, Option<String>, String)>> {
    let request = server.client(proto).post(url).json(review);
    std::thread::spawn(move || {
        block_on(async move {
            let response = request.send().await?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.text().await?;
            anyhow::Ok((status, retry_after, body))
        })
    })
}

fn join<T>(handle: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
}

#[test]
fn the_api_servers_timeout_is_answered_before_it_passes() -> Result<()> {
    // The policy alone would run for 5 s; the API server waits 2 s.
    let server = Server::start_with(NO_BREAKER, spin_config(5000, "deny"))?;
    let review = fixture("pod-allowed.json")?;
    let started = Instant::now();
    let answer = server.review("/validate/spin?timeout=2s", &review)?;
    let elapsed = started.elapsed();
    ensure!(!answer.allowed(), "{answer}");
    ensure!(
        answer
            .message()
            .starts_with("spin: policy failed: exceeded its deadline of"),
        "{answer}"
    );
    ensure!(
        elapsed < Duration::from_secs(2),
        "answered after {elapsed:?}, past the API server's 2 s timeout"
    );
    // Without ?timeout= the policy's own deadline applies.
    let answer = server.review("/validate/spin?timeout=banana", &review)?;
    ensure!(
        answer.message() == "spin: policy failed: exceeded its deadline of 5000 ms",
        "{answer}"
    );
    println!("?timeout=2s: answered in {} ms", elapsed.as_millis());
    Ok(())
}

#[test]
fn a_full_evaluation_queue_answers_503_at_once() -> Result<()> {
    // One review evaluated at a time, one waiting: a third is refused.
    let server = Server::start_with(
        &[
            "--max-concurrent-reviews",
            "1",
            "--max-queued-reviews",
            "1",
            "--breaker-failures",
            "0",
        ],
        spin_config(800, "allow"),
    )?;
    let review = fixture("pod-allowed.json")?;
    let url = server.url("/validate/spin");
    let first = post_in_background(&server, Proto::H2, &url, &review);
    let second = post_in_background(&server, Proto::H1, &url, &review);
    // Wait until the two hold the slot and the queue place.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = server.metrics()?;
        let gauge = |name| metric_value(&metrics, name).unwrap_or_default();
        if gauge("portcullis_evaluations_in_flight") >= 1.0
            && gauge("portcullis_evaluations_queued") >= 1.0
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the first two reviews never took the slot and the queue:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, retry_after, body) = join(post_in_background(&server, Proto::H2, &url, &review))?;
    // At once: while the first review still holds the slot.
    let refused_at_once = !first.is_finished();
    ensure!(status == 503, "expected 503, got {status}: {body}");
    ensure!(
        retry_after.as_deref() == Some("1"),
        "Retry-After: {retry_after:?}"
    );
    ensure!(
        body.starts_with("server busy: 1 reviews are being evaluated and 1 are waiting"),
        "{body:?}"
    );
    ensure!(
        refused_at_once,
        "the refusal came after the first review finished: it must not wait for a slot"
    );
    for handle in [first, second] {
        let (status, _, body) = join(handle)?;
        ensure!(
            status == 200,
            "a review within the bounds got {status}: {body}"
        );
    }
    // Once the queue drains, reviews are served again.
    let answer = server.review("/validate/spin", &review)?;
    ensure!(answer.allowed(), "{answer}");
    Ok(())
}

#[test]
fn sigterm_drains_in_flight_reviews_and_exits_zero() -> Result<()> {
    let server = Server::start_with(
        &["--shutdown-grace", "10", "--breaker-failures", "0"],
        spin_config(SPIN_MS, "allow"),
    )?;
    let review = fixture("pod-allowed.json")?;
    let url = server.url("/validate/spin");

    let started = Instant::now();
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let proto = if i % 2 == 0 { Proto::H2 } else { Proto::H1 };
            post_in_background(&server, proto, &url, &review)
        })
        .collect();
    // Wait until the server itself counts every review as in flight, then
    // ask it to stop.
    let wait_until = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = server.get("/metrics")?.text();
        if metrics.contains(&format!("portcullis_evaluations_in_flight {IN_FLIGHT}\n")) {
            break;
        }
        ensure!(
            Instant::now() < wait_until,
            "the reviews never were all in flight:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.terminate()?;
    let signalled = started.elapsed();

    let mut completed = 0;
    for request in requests {
        let (status, _, body) = join(request)?;
        ensure!(
            status == 200,
            "an in-flight review got HTTP {status}: {body}"
        );
        let body: serde_json::Value = serde_json::from_str(&body)?;
        ensure!(
            body["response"]["allowed"] == true,
            "an in-flight review was not answered in full: {body}"
        );
        completed += 1;
    }

    // The process exits by itself, with 0, well within the grace period.
    let status = server.wait_exit(Duration::from_secs(10))?;
    let exited = started.elapsed();
    ensure!(
        status.code() == Some(0),
        "the server exited with {status}\n{}",
        server.logs()
    );
    // Nothing listens any more.
    let client = server.client(Proto::H1).clone();
    let healthz = server.url("/healthz");
    let after = block_on(async move { client.get(healthz).send().await });
    ensure!(after.is_err(), "the server still answered after exiting");
    let logs = server.logs();
    ensure!(logs.contains("SIGTERM received; draining"), "{logs}");
    println!(
        "drain: {completed}/{IN_FLIGHT} in-flight reviews answered 200 after SIGTERM at {} ms; \
         exit code 0 at {} ms",
        signalled.as_millis(),
        exited.as_millis()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Slow clients: header and body read timeouts, and the connection cap
// ---------------------------------------------------------------------------

/// A raw TLS connection to the server (HTTP/1.1), for writing requests
/// byte by byte the way a slow client would.
fn raw_tls(
    server: &Server,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    let config = std::sync::Arc::new(portcullis_e2e::tls_config(&server.certs.ca_pem, Proto::H1)?);
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let connection = rustls::ClientConnection::new(config, name)?;
    let socket = std::net::TcpStream::connect(server.addr())?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(rustls::StreamOwned::new(connection, socket))
}

/// Reads until the server closes the connection (or 10 s pass); returns
/// what it sent and when it closed.
fn read_until_closed(stream: &mut impl std::io::Read, started: Instant) -> (String, Duration) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn slow_clients_are_cut_off() -> Result<()> {
    use std::io::Write as _;
    let server = Server::start_with(
        &[
            "--header-read-timeout",
            "1",
            "--body-read-timeout",
            "1",
            "--breaker-failures",
            "0",
        ],
        spin_config(100, "allow"),
    )?;

    // Headers that never finish: the connection is closed after ~1 s.
    let mut stream = raw_tls(&server)?;
    let started = Instant::now();
    stream.write_all(
        b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n",
    )?;
    stream.flush()?;
    let (_, closed_after) = read_until_closed(&mut stream, started);
    ensure!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(5),
        "a client that never finished its headers was cut off after {closed_after:?}"
    );

    // A body that never arrives: 408 with a message after ~1 s.
    let mut stream = raw_tls(&server)?;
    let started = Instant::now();
    stream.write_all(
        b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"kind\":",
    )?;
    stream.flush()?;
    let (answer, answered_after) = read_until_closed(&mut stream, started);
    ensure!(
        answer.starts_with("HTTP/1.1 408"),
        "expected 408, got {answer:?}"
    );
    ensure!(
        answer.contains("request body was not received within 1 seconds"),
        "{answer:?}"
    );
    ensure!(
        answered_after < Duration::from_secs(5),
        "the 408 came after {answered_after:?}"
    );

    // The server still serves well-behaved clients.
    let answer = server.review("/validate", &fixture("pod-allowed.json")?)?;
    ensure!(answer.allowed(), "{answer}");
    println!(
        "slow clients: unfinished headers closed after {} ms, unfinished body answered 408 after {} ms",
        closed_after.as_millis(),
        answered_after.as_millis()
    );
    Ok(())
}

/// Sends `GET /healthz` on a new connection; what came back (empty when
/// the connection was closed without an answer) and how long it took.
fn healthz_on_a_new_connection(server: &Server) -> Result<(String, Duration)> {
    use std::io::Write as _;
    let mut stream = raw_tls(server)?;
    let started = Instant::now();
    let sent = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .and_then(|()| stream.flush());
    let (answer, took) = read_until_closed(&mut stream, started);
    Ok((if sent.is_ok() { answer } else { String::new() }, took))
}

#[test]
fn connections_beyond_the_cap_are_closed() -> Result<()> {
    let operations = portcullis_e2e::free_port()?;
    let metrics_addr = format!("127.0.0.1:{operations}");
    let server = Server::start_with(
        &[
            "--max-connections",
            "2",
            "--metrics-addr",
            &metrics_addr,
            "--breaker-failures",
            "0",
        ],
        spin_config(SPIN_MS, "allow"),
    )?;
    // Idle connections take both places, yet a new connection is served:
    // it takes the place of the one idle longest.
    let held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(server.addr()))
        .collect::<std::io::Result<_>>()?;
    let (answer, _) = healthz_on_a_new_connection(&server)?;
    ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "idle connections kept a new one out: {answer:?}"
    );
    drop(held);

    // Two connections with a review in flight each take both places: a
    // third is closed at once, without an answer.
    let review = fixture("pod-allowed.json")?;
    let url = server.url("/validate/spin");
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let client = https_client(&server.certs.ca_pem, Proto::H1, &[])?;
            let request = client.post(&url).json(&review);
            Ok(std::thread::spawn(move || {
                block_on(async move { anyhow::Ok(request.send().await?.status()) })
            }))
        })
        .collect::<Result<_>>()?;
    let metrics_url = format!("http://{metrics_addr}/metrics");
    // Plain HTTP to the operations listener, which has places of its own.
    let plain = https_client(&server.certs.ca_pem, Proto::H1, &[])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let request = plain.get(&metrics_url);
        let metrics =
            block_on(async move { request.send().await?.text().await }).unwrap_or_default();
        if metric_value(&metrics, "portcullis_evaluations_in_flight") == Some(2.0) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the two reviews never were in flight:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (answer, closed_after) = healthz_on_a_new_connection(&server)?;
    ensure!(
        answer.is_empty(),
        "a connection beyond the cap of busy ones was served: {answer:?}"
    );
    ensure!(
        closed_after < Duration::from_secs(2),
        "the refused connection stayed open for {closed_after:?}"
    );
    for request in busy {
        let status = join(request)?;
        ensure!(status == 200, "a review in flight got HTTP {status}");
    }
    // Once they are answered, new connections are served again.
    let (answer, _) = healthz_on_a_new_connection(&server)?;
    ensure!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    Ok(())
}

#[test]
fn bodies_held_at_once_stay_within_their_budget() -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    // 2 HTTP/2 connections x 128 streams x 7 MB bodies: 1.8 GB offered at
    // once; the server may hold 64 MiB of them (its default).
    const CONNECTIONS: usize = 2;
    const STREAMS: usize = 128;
    const BODY: usize = 7_000_000;
    let server = Server::start(spin_config(100, "allow"))?;
    let pid = server.pid();
    let idle = rss_bytes(pid).context("the server's RSS")?;
    let peak = Arc::new(AtomicU64::new(idle));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(rss) = rss_bytes(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // A JSON string of 7 MB: valid until the server has read it all.
    let mut body = Vec::with_capacity(BODY);
    body.extend_from_slice(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","pad":""#,
    );
    body.resize(BODY - 2, b'x');
    body.extend_from_slice(br#""}"#);
    // Shared by every request without a copy each.
    let body: &'static [u8] = Box::leak(body.into_boxed_slice());
    let url = server.url("/validate");
    let statuses = block_on(async {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..CONNECTIONS {
            // A client of its own: a connection of its own.
            let client = https_client(&server.certs.ca_pem, Proto::H2, &[])?;
            for _ in 0..STREAMS {
                let (client, url) = (client.clone(), url.clone());
                calls.spawn(async move {
                    let reply = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await?;
                    anyhow::Ok(reply.status().as_u16())
                });
            }
        }
        anyhow::Ok(calls.join_all().await)
    })?;
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let answered = statuses.iter().filter(|s| s.is_ok()).count();
    let grew = peak.load(Ordering::Relaxed).saturating_sub(idle) >> 20;
    println!(
        "{} bodies of {BODY} bytes offered at once: {answered} answered, server RSS grew by {grew} MiB",
        CONNECTIONS * STREAMS
    );
    ensure!(
        grew < 256,
        "the server grew by {grew} MiB holding bodies (budget 64 MiB)"
    );
    ensure!(server.is_running(), "the server died\n{}", server.logs());
    Ok(())
}

#[test]
fn policy_status_and_metrics_are_not_served_on_the_webhook_port_by_default() -> Result<()> {
    let operations = portcullis_e2e::free_port()?;
    let metrics_addr = format!("127.0.0.1:{operations}");
    // The harness turns the HTTPS status on for the other tests; the last
    // word here is the default.
    let server = Server::start_with(
        &["--metrics-addr", &metrics_addr, "--status-on-https=false"],
        spin_config(100, "allow"),
    )?;
    for path in ["/policies", "/metrics"] {
        let reply = server.get(path)?;
        ensure!(
            reply.status == reqwest::StatusCode::NOT_FOUND,
            "GET {path} on the HTTPS port: expected 404, got {reply}"
        );
    }
    ensure!(
        server.get("/readyz")?.status.is_success(),
        "the probes stay on HTTPS"
    );
    let (policies, metrics) = block_on(async {
        // Plain HTTP; the harness's client speaks it too.
        let plain = https_client(&server.certs.ca_pem, Proto::H1, &[])?;
        let policies: serde_json::Value = plain
            .get(format!("http://{metrics_addr}/policies"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let metrics = plain
            .get(format!("http://{metrics_addr}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        anyhow::Ok((policies, metrics))
    })?;
    ensure!(
        policies["policies"][0]["name"] == "spin",
        "the operations listener serves /policies: {policies:#}"
    );
    ensure!(metrics.contains("portcullis_policies_loaded"), "{metrics}");
    Ok(())
}

#[test]
fn idle_connections_to_the_operations_listener_are_capped() -> Result<()> {
    let operations = portcullis_e2e::free_port()?;
    let metrics_addr = format!("127.0.0.1:{operations}");
    let server = Server::start_with(
        &["--metrics-addr", &metrics_addr],
        spin_config(100, "allow"),
    )?;
    let before = rss_bytes(server.pid()).context("the server's RSS")?;
    // 300 connections that never send a byte: without a cap each would
    // hold a descriptor for as long as the client likes.
    let idle: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(&metrics_addr).ok())
        .collect();
    ensure!(
        idle.len() > 64,
        "could only open {} connections",
        idle.len()
    );
    // The webhook still serves meanwhile.
    let answer = server.review("/validate/spin", &fixture("pod-allowed.json")?)?;
    ensure!(answer.allowed(), "{answer}");
    // The server closes what is past its cap at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    let held = loop {
        let held = idle.iter().filter(|stream| still_open(stream)).count();
        if held <= 64 || Instant::now() > deadline {
            break held;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(
        held <= 64,
        "the operations listener holds {held} idle connections (cap 64)"
    );
    ensure!(
        std::fs::read_to_string(server.stderr_log())?.contains("connection limit reached"),
        "refusing connections is logged"
    );
    let grew = rss_bytes(server.pid())
        .unwrap_or(before)
        .saturating_sub(before)
        >> 20;
    ensure!(
        grew < 64,
        "300 idle connections grew the server by {grew} MiB"
    );
    ensure!(server.is_running(), "{}", server.logs());
    Ok(())
}

/// Whether the server still holds `stream` open (no EOF, no error).
fn still_open(stream: &std::net::TcpStream) -> bool {
    let _ = stream.set_nonblocking(true);
    let mut byte = [0u8; 1];
    matches!(
        std::io::Read::read(&mut &*stream, &mut byte),
        Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}
