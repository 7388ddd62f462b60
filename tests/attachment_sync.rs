//! Attachments to the cloud on real parts: the daemon's HTTPS API, two mosquitto brokers and
//! the real `hema3n-receiver`. 50 MiB of attachments are uploaded while the cloud is
//! unreachable, then the case reaches ESI 2 (a pre-alert). On reconnect the pre-alert is sent
//! and receipted before any attachment part; daemon and receiver are killed -9 in the middle
//! of the transfer and restarted; in the end every attachment arrives exactly once, complete,
//! and the receiver's exported files have the originals' SHA-256.

mod common;

use common::Appliance;
use common::broker::{Broker, wait_for};
use common::cloud::{Pki, Receiver, enable_sync};
use hema3n_edge::model::{Actor, Role};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use tokio_rustls::TlsConnector;

const PIN: &str = "pin-4829";
const FILES: usize = 5;
const FILE_BYTES: usize = 10 << 20;
const PIECE: usize = 1 << 20;

/// A PDF of `n` bytes whose body is pseudo-random (so no two parts are alike).
fn pdf(seed: u64, n: usize) -> Vec<u8> {
    let mut p = b"%PDF-1.4\n".to_vec();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while p.len() < n - 7 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.extend_from_slice(&x.to_le_bytes());
    }
    p.truncate(n - 7);
    p.extend_from_slice(b"\n%%EOF\n");
    p
}

async fn send(port: u16, tls: &TlsConnector, req: hyper::Request<Full<Bytes>>) -> (u16, Value) {
    let mut s = common::https::connect(port, tls).await;
    s.ready().await.unwrap();
    let resp = s.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn req(method: &str, path: &str, token: &str) -> hyper::http::request::Builder {
    hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("territory-id", "default")
        .header("authorization", format!("Bearer {token}"))
}

fn json_req(method: &str, path: &str, token: &str, v: Value) -> hyper::Request<Full<Bytes>> {
    req(method, path, token)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&v).unwrap())))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_queued_offline_follow_the_prealert_and_survive_kill9() {
    let pki = Pki::new();
    let (mut cloud, _) = pki.broker();
    let onboard = Broker::start();
    let a = Appliance::with_broker(
        &onboard.url(),
        "[triage]\nmodel_dir = \"/nonexistent/hema3n-models\"\ndebounce_ms = 20\n",
    );
    let phc = hema3n_edge::crypto::password::hash_secret(PIN).unwrap();
    a.open()
        .add_user(
            &Actor::cli(),
            "medic",
            "Sam Medic",
            Role::Paramedic,
            "default",
            &phc,
        )
        .unwrap();
    let r = Receiver::init(&pki, &cloud);
    r.pair(&a);
    // One envelope in flight at a time: the transfer takes long enough (one receipt round trip
    // per part) for the kill -9 below to land in the middle of it.
    enable_sync(&a, &pki, &cloud, "window = 1\n");
    // The cloud is unreachable: its broker is down, the receiver not started.
    cloud.pause();
    let mut daemon = a.start_daemon();
    let cert = a.dir.join("keys/api-cert.pem");
    let tls = TlsConnector::from(hema3n_edge::tls::client_config(&cert, None).unwrap());
    let mut port = a.api_port();
    let login = hyper::Request::builder()
        .method("POST")
        .uri("/api/v1/auth/login")
        .header("host", "localhost")
        .header("territory-id", "default")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&json!({"user_id": "medic", "secret": PIN})).unwrap(),
        )))
        .unwrap();
    let (s, l) = send(port, &tls, login).await;
    assert_eq!(s, 200, "{l}");
    let token = l["token"].as_str().unwrap().to_string();
    let (s, c) = send(
        port,
        &tls,
        json_req(
            "POST",
            "/api/v1/cases",
            &token,
            json!({"chief_complaint": "chest pain"}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{c}");
    let case = c["id"].as_str().unwrap().to_string();

    // 50 MiB of ECG strips while offline, in 1 MiB pieces.
    let mut files = vec![];
    for i in 0..FILES {
        let body = pdf(i as u64 + 1, FILE_BYTES);
        let (s, v) = send(
            port,
            &tls,
            json_req(
                "POST",
                &format!("/api/v1/cases/{case}/attachments"),
                &token,
                json!({"kind": "ecg", "caption": format!("strip {i}"), "size": body.len()}),
            ),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let aid = v["id"].as_str().unwrap().to_string();
        let mut last = Value::Null;
        for (k, piece) in body.chunks(PIECE).enumerate() {
            let rq = req(
                "PATCH",
                &format!("/api/v1/cases/{case}/attachments/{aid}/content"),
                &token,
            )
            .header("content-type", "application/offset+octet-stream")
            .header("upload-offset", (k * PIECE).to_string())
            .body(Full::new(Bytes::copy_from_slice(piece)))
            .unwrap();
            let (s, v) = send(port, &tls, rq).await;
            assert_eq!(s, 200, "{v}");
            last = v;
        }
        assert_eq!(last["state"], "stored", "{last}");
        assert_eq!(last["sha256"].as_str().unwrap(), common::sha256_hex(&body));
        files.push((aid, common::sha256_hex(&body)));
    }
    let parts_each = FILE_BYTES.div_ceil(768 * 1024) as i64;
    wait_for(60, "every attachment part sealed and queued", || {
        (a.query_i64("SELECT count(*) FROM outbox WHERE kind = 'attachment'")
            == FILES as i64 * parts_each)
            .then_some(())
    });
    // Then the case reaches ESI 2: a pre-alert, queued after the attachments.
    let (s, v) = send(
        port,
        &tls,
        json_req(
            "POST",
            &format!("/api/v1/cases/{case}/vitals"),
            &token,
            json!({"readings": [{"name": "spo2", "value": 91.0}]}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    wait_for(60, "the pre-alert queued", || {
        (a.query_i64("SELECT count(*) FROM outbox WHERE kind = 'prealert'") == 1).then_some(())
    });
    assert!(
        a.query_i64("SELECT min(seq) FROM outbox WHERE kind = 'prealert'")
            > a.query_i64("SELECT max(seq) FROM outbox WHERE kind = 'attachment'"),
        "the pre-alert was queued last"
    );

    // Reconnect: the pre-alert is receipted before any attachment part.
    cloud.resume();
    let mut recv = r.spawn();
    wait_for(120, "the pre-alert receipted", || {
        (a.query_i64("SELECT count(*) FROM outbox WHERE kind = 'prealert' AND state = 'receipted'")
            == 1)
            .then_some(())
    });
    let pre = a.query_i64("SELECT receipted_at FROM outbox WHERE kind = 'prealert'");
    let first_part = a.query_i64(
        "SELECT coalesce(min(receipted_at), 9223372036854775807) FROM outbox WHERE kind = 'attachment'",
    );
    assert!(
        pre <= first_part,
        "pre-alert receipted at {pre}, first part at {first_part}"
    );

    // Mid-transfer: kill -9 both ends, then start them again.
    let total = FILES as i64 * parts_each;
    wait_for(120, "some attachment parts receipted", || {
        (a.query_i64(
            "SELECT count(*) FROM outbox WHERE kind = 'attachment' AND state = 'receipted'",
        ) >= 3)
            .then_some(())
    });
    daemon.kill9();
    recv.kill9();
    let done = a
        .query_i64("SELECT count(*) FROM outbox WHERE kind = 'attachment' AND state = 'receipted'");
    assert!(
        done < total,
        "the transfer was still under way ({done} of {total})"
    );
    let mut recv = r.spawn();
    let mut daemon = a.start_daemon();
    wait_for(240, "every part receipted", || {
        (a.query_i64(
            "SELECT count(*) FROM outbox WHERE kind = 'attachment' AND state = 'receipted'",
        ) == total)
            .then_some(())
    });

    // Exactly once and intact at the receiver.
    let list: Vec<Value> = r
        .ok(&["attachments"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(list.len(), FILES, "{list:?}");
    for (aid, sha) in &files {
        let got = list.iter().find(|x| x["attachment_id"] == *aid).unwrap();
        assert_eq!(got["state"], "complete", "{got}");
        assert_eq!(got["parts_received"], parts_each, "{got}");
        assert_eq!(got["sha256"], *sha);
        let out = r.tmp.path().join(format!("{aid}.pdf"));
        let which = format!("{}/{aid}", got["appliance_id"].as_str().unwrap());
        r.ok(&[
            "attachments",
            "--export",
            &which,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(
            common::sha256_hex(&std::fs::read(&out).unwrap()),
            *sha,
            "exported {aid}"
        );
    }
    // The restarted daemon listens on a new port (its log's last line says which).
    port = a.api_port();
    // Closing the case seals its bundle, which names every attachment by id, size and SHA-256
    // (valid FHIR R4 under the independent validator).
    let (st, v) = send(
        port,
        &tls,
        req("POST", &format!("/api/v1/cases/{case}/close"), &token)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    wait_for(120, "the case bundle receipted", || {
        (a.query_i64("SELECT count(*) FROM outbox WHERE kind = 'bundle' AND state = 'receipted'")
            == 1)
            .then_some(())
    });
    let appliance = list[0]["appliance_id"].as_str().unwrap();
    let bundle_id = a.query_text("SELECT bundle_id FROM outbox WHERE kind = 'bundle'");
    let body = r.ok(&["bundles", &format!("{appliance}/{bundle_id}")]);
    let bundle: Value = serde_json::from_str(&body).unwrap();
    let mut named = 0;
    for e in bundle["entry"].as_array().unwrap() {
        let res = &e["resource"];
        if !matches!(res["resourceType"].as_str(), Some("DocumentReference")) {
            continue;
        }
        let ids = res["identifier"].as_array().unwrap();
        let Some(att) = ids.iter().find(|i| i["system"] == "urn:hema3n:attachment") else {
            continue;
        };
        let (aid, sha) = files.iter().find(|(id, _)| att["value"] == *id).unwrap();
        assert!(
            ids.iter()
                .any(|i| i["system"] == "urn:hema3n:sha256" && i["value"] == *sha)
        );
        assert_eq!(res["content"][0]["attachment"]["size"], FILE_BYTES, "{aid}");
        named += 1;
    }
    assert_eq!(named, FILES);
    let f = r.tmp.path().join("case-bundle.json");
    std::fs::write(&f, &body).unwrap();
    let report = common::cloud::fhir_validate(&[f]);
    assert!(report.contains("DocumentReference="), "{report}");
    let stats = r.stats();
    assert_eq!(
        stats["conflicts"].as_i64().unwrap_or(0),
        0,
        "no conflicting duplicates: {stats}"
    );
    daemon.stop();
    recv.stop();
    // Sentinels: no run of any file's bytes (raw, hex or base64) in a log, and none in any file
    // of either side's data directory (databases, WAL, queues): everything at rest is sealed.
    let bodies: Vec<Vec<u8>> = (0..FILES).map(|i| pdf(i as u64 + 1, FILE_BYTES)).collect();
    for (what, log) in [("daemon log", a.daemon_log()), ("receiver log", r.log())] {
        assert_no_content(what, log.as_bytes(), &bodies, true);
    }
    for dir in [a.dir.as_path(), r.tmp.path()] {
        // (The `.pdf` files are this test's own exports, above.)
        for f in common::files_below(dir)
            .into_iter()
            .filter(|f| f.extension() != Some("pdf".as_ref()))
        {
            let bytes = std::fs::read(&f).unwrap();
            assert_no_content(&f.display().to_string(), &bytes, &bodies, false);
        }
    }
}

/// Fails when `hay` holds 24 bytes from the start, middle or end of any of `files` (and, for
/// text, their hex or base64 form).
fn assert_no_content(what: &str, hay: &[u8], files: &[Vec<u8>], text: bool) {
    use base64::Engine;
    let has = |needle: &[u8]| common::contains(hay, needle);
    for (i, f) in files.iter().enumerate() {
        // Offsets that are multiples of 3, so a base64 run of the file contains the window's.
        for at in [1002, f.len() / 2 / 3 * 3, (f.len() - 1000) / 3 * 3] {
            let w = &f[at..at + 24];
            assert!(!has(w), "{what} holds bytes of file {i} at {at}");
            if text {
                assert!(!has(hex::encode(w).as_bytes()), "{what}: hex of file {i}");
                let b64 = base64::engine::general_purpose::STANDARD.encode(w);
                assert!(!has(b64.as_bytes()), "{what}: base64 of file {i}");
            }
        }
    }
}
