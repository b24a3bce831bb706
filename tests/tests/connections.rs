//! Connections as an attacker and an orchestrator use them: idle peers
//! that try to hold the connection cap, a process out of file
//! descriptors, and SIGTERM while requests are on the wire.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use portcullis_e2e::{
    Proto, Server, block_on, fixture, https_client, run_cli, spawn, tls_config,
    write_default_config,
};

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to `server` with its handshake done, offering `proto`.
fn handshake(server: &Server, proto: Proto) -> Result<TlsStream> {
    let config = Arc::new(tls_config(&server.certs.ca_pem, proto)?);
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut connection = rustls::ClientConnection::new(config, name)?;
    let mut socket = TcpStream::connect(server.addr())?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    while connection.is_handshaking() {
        connection.complete_io(&mut socket)?;
    }
    Ok(rustls::StreamOwned::new(connection, socket))
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: what a client sends after the preface.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// The HTTP/2 preface, then `GET /healthz` on stream 1 (HPACK without
/// Huffman coding); returns once the response's HEADERS frame arrived.
fn h2_request(stream: &mut TlsStream) -> Result<()> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
    block.extend([0x04, 8]); // :path, literal, not indexed
    block.extend(b"/healthz");
    block.extend([0x01, 9]); // :authority, literal, not indexed
    block.extend(b"localhost");
    let length = u32::try_from(block.len())?.to_be_bytes();
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    let mut frame = vec![length[1], length[2], length[3], 0x01, 0x05, 0, 0, 0, 1];
    frame.extend(block);
    stream.write_all(H2_PREFACE)?;
    stream.write_all(H2_SETTINGS)?;
    stream.write_all(&frame)?;
    stream.flush()?;
    loop {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header)?;
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload)?;
        let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        match header[3] {
            0x01 if stream_id == 1 => return Ok(()),
            0x07 => bail!("GOAWAY before the response"),
            _ => {}
        }
    }
}

/// The connections the server side holds on `port`: sockets with that
/// local port that are established, or that the client closed and the
/// server has not (CLOSE_WAIT). What the server closed is not counted.
fn held_by_server(port: u16) -> Result<usize> {
    let mut held = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if local_port == Some(port) && matches!(*state, "01" | "08") {
                held += 1;
            }
        }
    }
    Ok(held)
}

/// Polls until the server holds at most `at_most` connections on its port
/// or `within` passes; returns what it held last and when.
fn wait_until_held(server: &Server, at_most: usize, within: Duration) -> Result<(usize, Duration)> {
    let started = Instant::now();
    loop {
        let held = held_by_server(server.addr().port())?;
        if held <= at_most || started.elapsed() > within {
            return Ok((held, started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_connections_are_closed_and_cannot_hold_the_cap() -> Result<()> {
    const CAP: usize = 50;
    let server = Server::start_with(
        &["--max-connections", "50", "--header-read-timeout", "4"],
        write_default_config,
    )?;
    // 60 peers that never make progress, more than the cap, 12 of each kind.
    let started = Instant::now();
    let mut tcp_only = Vec::new();
    let mut tls = Vec::new();
    for round in 0..12 {
        let step = |what: &'static str| move || format!("round {round}: {what}");
        // Connects and sends nothing, not even a TLS ClientHello.
        tcp_only.push(TcpStream::connect(server.addr())?);
        // The TLS handshake, HTTP/1.1 negotiated, then nothing.
        tls.push(handshake(&server, Proto::H1).with_context(step("HTTP/1.1 handshake"))?);
        // The HTTP/2 preface and SETTINGS, then nothing.
        let mut preface = handshake(&server, Proto::H2).with_context(step("h2 handshake"))?;
        preface.write_all(H2_PREFACE)?;
        preface.write_all(H2_SETTINGS)?;
        preface.flush()?;
        tls.push(preface);
        // Half of the preface.
        let mut half =
            handshake(&server, Proto::H2).with_context(step("half-preface handshake"))?;
        half.write_all(&H2_PREFACE[..12])?;
        half.flush()?;
        tls.push(half);
        // One HTTP/2 request answered, then an idle connection (never
        // answering the server's PING either).
        let mut after_request =
            handshake(&server, Proto::H2).with_context(step("request handshake"))?;
        h2_request(&mut after_request).with_context(step("h2 request"))?;
        tls.push(after_request);
    }
    let opened = tcp_only.len() + tls.len();
    let opened_in = started.elapsed();

    // Never more than the cap: each new peer took the place of the one
    // idle longest.
    let (held, _) = wait_until_held(&server, CAP, Duration::from_secs(2))?;
    ensure!(
        held <= CAP,
        "{opened} idle peers hold {held} connections (cap {CAP})"
    );
    // And a new client is served at once, long before any idle timeout.
    let client = https_client(&server.certs.ca_pem, Proto::H2, &[])?;
    let asked = Instant::now();
    let url = server.url("/validate");
    let review = fixture("pod-allowed.json")?;
    let status = block_on(async move {
        let response = client.post(url).json(&review).send().await?;
        anyhow::Ok(response.status())
    })?;
    let answered_in = asked.elapsed();
    ensure!(status == 200, "a client among idle peers got HTTP {status}");
    ensure!(
        answered_in < Duration::from_secs(2),
        "a client among idle peers waited {answered_in:?}"
    );

    // Each is closed within the header timeout (the TLS handshake, the
    // first request, the next request), HTTP/2 after a GOAWAY the peer
    // does not answer within another timeout: 8 s, and a margin.
    let (held, closed_in) = wait_until_held(&server, 0, Duration::from_secs(14))?;
    ensure!(
        held == 0,
        "{held} idle connections are still held after {closed_in:?} (header timeout 4 s)"
    );
    ensure!(server.is_running(), "{}", server.logs());
    println!(
        "idle peers: {opened} opened in {} ms against a cap of {CAP}; a new client \
         answered in {} ms; all closed {} ms later",
        opened_in.as_millis(),
        answered_in.as_millis(),
        closed_in.as_millis()
    );
    Ok(())
}

#[test]
fn running_out_of_descriptors_is_logged_and_the_listener_keeps_serving() -> Result<()> {
    // The cap is above what the process may open: the kernel refuses first.
    let server = Server::start_with(&["--max-connections", "4000"], write_default_config)?;
    let limit = run_cli(
        Path::new("prlimit"),
        &["--pid", &server.pid().to_string(), "--nofile=128:128"],
        None,
        Duration::from_secs(10),
    )?;
    ensure!(limit.status.success(), "prlimit failed: {limit}");
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(server.addr()).ok())
        .collect();
    // The listener logs that it cannot accept (once a second at most).
    let deadline = Instant::now() + Duration::from_secs(10);
    let logged = loop {
        let log = std::fs::read_to_string(server.stderr_log())?;
        if let Some(line) = log
            .lines()
            .find(|line| line.contains("cannot accept a connection"))
        {
            break line.to_owned();
        }
        ensure!(
            Instant::now() < deadline,
            "{} connections and no accept failure logged:\n{log}",
            idle.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(logged.contains("Too many open files"), "{logged}");
    let lines = std::fs::read_to_string(server.stderr_log())?
        .lines()
        .filter(|line| line.contains("cannot accept a connection"))
        .count();
    // Once the peers go, the same listener serves again.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match server.review("/validate", &fixture("pod-allowed.json")?) {
            Ok(answer) => {
                ensure!(answer.allowed(), "{answer}");
                break;
            }
            Err(error) => ensure!(
                Instant::now() < deadline,
                "the listener did not serve again: {error:#}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(server.is_running(), "{}", server.logs());
    println!("out of descriptors: {lines} log line(s), e.g. {logged}");
    Ok(())
}

/// What one request of the load below got.
struct Outcome {
    /// When it was sent, from the start of the load.
    sent: Duration,
    proto: Proto,
    /// Its status and whether it carried `Connection: close`, or the error.
    answer: Result<(u16, bool), String>,
}

#[test]
fn sigterm_answers_every_request_sent_before_the_listener_closes() -> Result<()> {
    const DELAY: Duration = Duration::from_secs(3);
    const CLIENTS: usize = 8;
    let server = Server::start_with(
        &["--shutdown-delay", "3", "--shutdown-grace", "5"],
        write_default_config,
    )?;
    let review = fixture("pod-allowed.json")?;
    let url = server.url("/validate");
    let started = Instant::now();
    // Clients keep sending until told to stop; each has its own
    // connections (HTTP/1.1 keep-alive or one HTTP/2 connection).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let clients = (0..CLIENTS)
        .map(|i| {
            let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
            let client = https_client(&server.certs.ca_pem, proto, &[])?;
            let (url, review, mut stop) = (url.clone(), review.clone(), stop_rx.clone());
            Ok(spawn(async move {
                let mut outcomes = Vec::new();
                while !*stop.borrow_and_update() {
                    let sent = started.elapsed();
                    let answer = match client.post(&url).json(&review).send().await {
                        Ok(response) => {
                            let close = response
                                .headers()
                                .get("connection")
                                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                            let status = response.status().as_u16();
                            match response.text().await {
                                Ok(_) => Ok((status, close)),
                                Err(error) => Err(format!("{error:?}")),
                            }
                        }
                        Err(error) => Err(format!("{error:?}")),
                    };
                    outcomes.push(Outcome {
                        sent,
                        proto,
                        answer,
                    });
                }
                outcomes
            }))
        })
        .collect::<Result<Vec<_>>>()?;

    // Let the load run, then SIGTERM.
    std::thread::sleep(Duration::from_secs(1));
    // Taken before the signal is sent: the server's delay starts when it
    // receives it, which a loaded machine may make later than `kill`
    // returning, never earlier than this.
    let signalled = started.elapsed();
    server.terminate()?;
    // Readiness fails at once, while the webhook still answers.
    let readiness = server.url("/readyz");
    let probe = https_client(&server.certs.ca_pem, Proto::H1, &[])?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let probe = probe.clone();
        let readiness = readiness.clone();
        let status = block_on(async move { probe.get(readiness).send().await })
            .map(|response| response.status().as_u16());
        if status.as_ref().is_ok_and(|status| *status == 503) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "/readyz did not turn 503 after SIGTERM: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Keep sending for half the delay: the endpoints may not have dropped
    // the pod yet, so everything sent until then must be answered.
    std::thread::sleep((signalled + DELAY / 2).saturating_sub(started.elapsed()));
    let _ = stop_tx.send(true);
    let mut outcomes = Vec::new();
    for client in clients {
        outcomes.extend(block_on(client).context("a client task failed")?);
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|outcome| !matches!(outcome.answer, Ok((200, _))))
        .map(|outcome| {
            format!(
                "{:?} sent at {} ms (SIGTERM at {} ms): {:?}",
                outcome.proto,
                outcome.sent.as_millis(),
                signalled.as_millis(),
                outcome.answer
            )
        })
        .collect();
    let after = outcomes.iter().filter(|o| o.sent >= signalled).count();
    let near = outcomes
        .iter()
        .filter(|o| o.sent.abs_diff(signalled) <= Duration::from_millis(5))
        .count();
    ensure!(
        failed.is_empty(),
        "{} of {} requests were not answered 200:\n{}",
        failed.len(),
        outcomes.len(),
        failed.join("\n")
    );
    ensure!(after > 0, "no request was sent after SIGTERM");
    // HTTP/1.1 clients were told to close after their answer.
    let closed = outcomes
        .iter()
        .filter(|o| o.proto == Proto::H1 && o.sent >= signalled)
        .filter(|o| matches!(o.answer, Ok((_, true))))
        .count();
    ensure!(
        closed > 0,
        "no HTTP/1.1 answer after SIGTERM said Connection: close"
    );

    // Then it stops accepting and exits 0, within delay + grace.
    let status = server.wait_exit(DELAY + Duration::from_secs(5))?;
    let exited = started.elapsed() - signalled;
    ensure!(
        status.code() == Some(0),
        "exited with {status}\n{}",
        server.logs()
    );
    ensure!(
        exited >= DELAY,
        "exited {exited:?} after SIGTERM, before its {DELAY:?} delay"
    );
    println!(
        "SIGTERM: {} requests, {after} sent after it ({near} within 5 ms of it), all answered 200; \
         {closed} HTTP/1.1 answers said Connection: close; exit 0 after {} ms",
        outcomes.len(),
        exited.as_millis()
    );
    Ok(())
}
