//! The wire: TLS (trust, SANs), HTTP/1.1 and HTTP/2, the plain endpoints,
//! and bad input (each a 4xx with a plain-text reason, after which the server
//! keeps serving).

use anyhow::{Context, Result, ensure};
use portcullis_e2e::{
    GENERATION_ANNOTATION, Json, Proto, Server, StatusCode, Version, all_strings, error_chain,
    fixture, generate_certs, https_client, json, send, with_shared,
};

const POLICIES: [&str; 3] = ["allowed-images", "required-labels", "default-labels"];

#[test]
fn health_and_readiness() {
    with_shared(|s| {
        for proto in Proto::ALL {
            for path in ["/healthz", "/readyz"] {
                let reply = s.get_over(proto, path)?;
                ensure!(
                    reply.status == StatusCode::OK,
                    "GET {path} ({proto:?}): {reply}"
                );
                ensure!(
                    reply.version == proto.expected_version(),
                    "GET {path} ({proto:?}): {reply}"
                );
            }
        }
        Ok(())
    });
}

#[test]
fn policies_endpoint_lists_loaded_policies() {
    with_shared(|s| {
        let reply = s.get("/policies")?;
        ensure!(reply.status == StatusCode::OK, "GET /policies: {reply}");
        ensure!(
            reply.content_type().starts_with("application/json"),
            "GET /policies: {reply}"
        );
        let listing = reply.json()?;
        let strings = all_strings(&listing);
        for name in POLICIES {
            ensure!(
                strings.iter().any(|s| s == name),
                "GET /policies does not list {name}:\n{reply}"
            );
        }
        // Where the listing states its generation, answers carry the same.
        if let Some(generation) = listing.get("generation").and_then(Json::as_u64) {
            let a = s.review("/validate", &fixture("pod-allowed.json")?)?;
            let answered = a.audit_annotations()[GENERATION_ANNOTATION].clone();
            ensure!(
                answered == json!(generation.to_string()),
                "/policies says generation {generation}, the answer says {answered}"
            );
        }
        Ok(())
    });
}

#[test]
fn http2_is_negotiated_by_alpn_and_http1_still_works() {
    with_shared(|s| {
        let review = fixture("pod-allowed.json")?;
        let h2 = s.review_over(Proto::H2, "/validate", &review)?;
        ensure!(
            h2.reply.version == Version::HTTP_2,
            "h2 client got {:?}",
            h2.reply.version
        );
        let h1 = s.review_over(Proto::H1, "/validate", &review)?;
        ensure!(
            h1.reply.version == Version::HTTP_11,
            "http/1.1 client got {:?}",
            h1.reply.version
        );
        ensure!(
            h1.allowed() && h2.allowed(),
            "allowed pod denied:\n{h1}\n{h2}"
        );
        Ok(())
    });
}

#[test]
fn ip_san_is_accepted() {
    with_shared(|s| {
        for proto in Proto::ALL {
            let reply = send(s.client(proto).get(s.ip_url("/healthz")))
                .with_context(|| format!("GET https://127.0.0.1:{}/healthz ({proto:?})", s.port))?;
            ensure!(reply.status == StatusCode::OK, "{reply}");
            ensure!(reply.version == proto.expected_version(), "{reply}");
        }
        Ok(())
    });
}

fn ensure_handshake_fails(
    result: Result<reqwest::Response, reqwest::Error>,
    what: &str,
) -> Result<()> {
    match result {
        Ok(resp) => anyhow::bail!("{what}: expected a TLS failure, got HTTP {}", resp.status()),
        Err(e) => {
            let chain = error_chain(&e);
            ensure!(
                e.is_connect(),
                "{what}: expected a connect error, got: {chain}"
            );
            ensure!(
                chain.to_lowercase().contains("certificate"),
                "{what}: the error does not mention the certificate: {chain}"
            );
            Ok(())
        }
    }
}

#[test]
fn client_trusting_another_ca_fails_the_handshake() {
    with_shared(|s| {
        let other = tempfile::tempdir()?;
        let other_certs = generate_certs(&s.paths.bin, other.path())?;
        ensure!(
            other_certs.ca_pem != s.certs.ca_pem,
            "two `certs` runs produced the same CA"
        );
        for proto in Proto::ALL {
            let client = https_client(&other_certs.ca_pem, proto, &[])?;
            let url = s.url("/healthz");
            let result = portcullis_e2e::block_on(async move { client.get(&url).send().await });
            ensure_handshake_fails(result, &format!("client trusting another CA ({proto:?})"))?;
        }
        Ok(())
    });
}

#[test]
fn name_not_in_the_certificate_is_rejected() {
    with_shared(|s| {
        // The right CA, but a host name that is not among the SANs.
        let client = https_client(
            &s.certs.ca_pem,
            Proto::H2,
            &[("not-in-the-cert.example", s.addr())],
        )?;
        let url = format!("https://not-in-the-cert.example:{}/healthz", s.port);
        let result = portcullis_e2e::block_on(async move { client.get(&url).send().await });
        ensure_handshake_fails(result, "host name outside the SANs")
    });
}

/// A request the server must answer with `status` and a plain-text reason.
struct Bad {
    what: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// Text the reason must contain (case-insensitive), if any.
    mentions: Option<&'static str>,
}

fn bad_inputs() -> Result<Vec<Bad>> {
    let good = fixture("pod-allowed.json")?;
    let good_bytes = serde_json::to_vec(&good)?;
    let mut no_request = good.clone();
    no_request
        .as_object_mut()
        .context("fixture")?
        .remove("request");
    let mut no_uid = good.clone();
    no_uid["request"]
        .as_object_mut()
        .context("fixture")?
        .remove("uid");
    let json = Some("application/json");
    let mut cases = Vec::new();
    for path in ["/validate", "/mutate"] {
        cases.extend([
            Bad {
                what: "non-JSON body",
                path,
                content_type: json,
                body: b"this is { not json".to_vec(),
                status: 400,
                mentions: None,
            },
            Bad {
                what: "empty JSON object",
                path,
                content_type: json,
                body: b"{}".to_vec(),
                status: 422,
                mentions: None,
            },
            Bad {
                what: "a Pod, not an AdmissionReview",
                path,
                content_type: json,
                body: serde_json::to_vec(&json!({"kind": "Pod"}))?,
                status: 422,
                mentions: None,
            },
            Bad {
                what: "AdmissionReview without request",
                path,
                content_type: json,
                body: serde_json::to_vec(&no_request)?,
                status: 422,
                mentions: Some("request"),
            },
            Bad {
                what: "request without uid",
                path,
                content_type: json,
                body: serde_json::to_vec(&no_uid)?,
                status: 422,
                mentions: Some("uid"),
            },
            Bad {
                what: "Content-Type text/plain",
                path,
                content_type: Some("text/plain"),
                body: good_bytes.clone(),
                status: 415,
                mentions: None,
            },
        ]);
    }
    cases.push(Bad {
        what: "unknown policy",
        path: "/validate/does-not-exist",
        content_type: json,
        body: good_bytes,
        status: 404,
        mentions: Some("does-not-exist"),
    });
    Ok(cases)
}

/// After a bad request, a good one on the same client still works.
fn ensure_still_serving(s: &Server, proto: Proto, after: &str) -> Result<()> {
    let a = s
        .review_over(proto, "/validate", &fixture("pod-allowed.json")?)
        .with_context(|| format!("a good request after {after} ({proto:?}) failed"))?;
    ensure!(a.allowed(), "a good request after {after} was denied:\n{a}");
    Ok(())
}

fn ensure_plain_reason(reply: &portcullis_e2e::Reply, what: &str) -> Result<()> {
    ensure!(
        !reply.text().trim().is_empty(),
        "{what}: empty reason\n{reply}"
    );
    ensure!(
        reply.content_type().starts_with("text/plain"),
        "{what}: the reason is not text/plain\n{reply}"
    );
    Ok(())
}

#[test]
fn bad_input_gets_4xx_with_a_reason() {
    with_shared(|s| {
        let mut failures = Vec::new();
        for proto in Proto::ALL {
            for case in bad_inputs()? {
                let what = format!("{} on {} ({proto:?})", case.what, case.path);
                let check = || -> Result<()> {
                    let reply = s.post(proto, case.path, case.content_type, case.body.clone())?;
                    ensure!(
                        reply.status.as_u16() == case.status,
                        "{what}: expected HTTP {}, got\n{reply}",
                        case.status
                    );
                    ensure_plain_reason(&reply, &what)?;
                    if let Some(word) = case.mentions {
                        ensure!(
                            reply.text().to_lowercase().contains(word),
                            "{what}: the reason does not mention {word:?}\n{reply}"
                        );
                    }
                    ensure_still_serving(s, proto, &what)
                };
                if let Err(e) = check() {
                    failures.push(format!("{e:#}"));
                }
            }
        }
        ensure!(s.is_running(), "the server died");
        ensure!(
            failures.is_empty(),
            "{} bad-input case(s) failed:\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
        Ok(())
    });
}

#[test]
fn json_content_type_with_charset_is_accepted() {
    with_shared(|s| {
        let review = fixture("pod-allowed.json")?;
        let reply = s.post(
            Proto::H2,
            "/validate",
            Some("application/json; charset=utf-8"),
            serde_json::to_vec(&review)?,
        )?;
        let a = portcullis_e2e::check_answer(&review, &reply)?;
        ensure!(a.allowed(), "{a}");
        Ok(())
    });
}

/// A valid review padded to ~9 MiB with an annotation, posted to /validate
/// and /mutate: 413 with a reason, and the server keeps serving.
fn ensure_413(s: &Server, proto: Proto) -> Result<()> {
    let mut review = fixture("pod-allowed.json")?;
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"padding": "x".repeat(9 * 1024 * 1024)});
    let body = serde_json::to_vec(&review)?;
    ensure!(body.len() > 9 * 1024 * 1024, "padding too small");
    let mut failures = Vec::new();
    for path in ["/validate", "/mutate"] {
        let what = format!("~9 MiB body on {path} ({proto:?})");
        let check = || -> Result<()> {
            let reply = s.post(proto, path, Some("application/json"), body.clone())?;
            ensure!(
                reply.status == StatusCode::PAYLOAD_TOO_LARGE,
                "{what}: expected 413, got\n{reply}"
            );
            ensure_plain_reason(&reply, &what)?;
            ensure_still_serving(s, proto, &what)
        };
        if let Err(e) = check() {
            failures.push(format!("{what}: {e:#}"));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

#[test]
fn body_over_8_mib_is_413_over_http2() {
    with_shared(|s| ensure_413(s, Proto::H2));
}

#[test]
fn body_over_8_mib_is_413_over_http1() {
    // The client writes the whole body before it reads the answer, as
    // kube-apiserver's does: the server must let it (read and discard the
    // body, or close gracefully) for the 413 to arrive.
    with_shared(|s| ensure_413(s, Proto::H1));
}

#[test]
fn body_just_under_the_limit_is_served() {
    // The limit is 8 MiB: a ~7 MiB review is answered normally.
    with_shared(|s| {
        let mut review = fixture("pod-allowed.json")?;
        review["request"]["object"]["metadata"]["annotations"] =
            json!({"padding": "x".repeat(7 * 1024 * 1024)});
        let a = s.review("/validate", &review)?;
        ensure!(a.allowed(), "{a}");
        Ok(())
    });
}

#[test]
fn answers_are_json_for_every_policy_path() {
    with_shared(|s| {
        let review: Json = fixture("pod-allowed.json")?;
        for path in [
            "/validate/allowed-images",
            "/validate/required-labels",
            "/mutate/default-labels",
        ] {
            for proto in Proto::ALL {
                let a = s.review_over(proto, path, &review)?;
                ensure!(a.allowed(), "{path} ({proto:?}):\n{a}");
            }
        }
        Ok(())
    });
}

#[test]
fn concurrent_reviews_each_get_their_own_answer() {
    // 100 reviews in flight at once per protocol (multiplexed on one HTTP/2
    // connection; a pool of connections for HTTP/1.1), alternating allowed
    // and denied pods, each with its own uid: no answer may cross over.
    with_shared(|s| {
        let allowed = fixture("pod-allowed.json")?;
        let denied = fixture("pod-denied.json")?;
        for proto in Proto::ALL {
            let mut reviews = Vec::new();
            for i in 0..100 {
                let base = if i % 2 == 0 { &allowed } else { &denied };
                let uid = format!("c0c0c0c0-0000-4000-8000-{i:012}");
                reviews.push((portcullis_e2e::with_uid(base, &uid), i % 2 == 0));
            }
            let client = s.client(proto).clone();
            let url = s.url("/validate");
            let replies = portcullis_e2e::block_on(async move {
                let mut set = tokio::task::JoinSet::new();
                for (n, (review, _)) in reviews.iter().enumerate() {
                    let body = serde_json::to_vec(review).unwrap_or_default();
                    let req = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body);
                    set.spawn(async move {
                        let resp = req.send().await?;
                        let status = resp.status();
                        let version = resp.version();
                        let headers = resp.headers().clone();
                        let body = resp.bytes().await?.to_vec();
                        Ok::<_, reqwest::Error>((
                            n,
                            portcullis_e2e::Reply {
                                status,
                                version,
                                headers,
                                body,
                            },
                        ))
                    });
                }
                let mut out = Vec::new();
                while let Some(joined) = set.join_next().await {
                    out.push(joined);
                }
                (reviews, out)
            });
            let (reviews, results) = replies;
            ensure!(results.len() == reviews.len(), "lost requests");
            for joined in results {
                let (n, reply) = joined
                    .context("task panicked")?
                    .map_err(|e| anyhow::anyhow!("{proto:?}: {}", error_chain(&e)))?;
                let (review, expect_allowed) = &reviews[n];
                let a = portcullis_e2e::check_answer(review, &reply)
                    .with_context(|| format!("concurrent request {n} ({proto:?})"))?;
                ensure!(
                    a.allowed() == *expect_allowed,
                    "concurrent request {n} ({proto:?}): expected allowed={expect_allowed}\n{a}"
                );
            }
        }
        Ok(())
    });
}
