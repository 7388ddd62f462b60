//! Attachments through the real API stack (in process, real SQLCipher file): bad input gets a
//! named error and leaves nothing behind, uploads resume at the committed offset, photo
//! metadata is stripped (checked by Pillow), DICOM objects split and re-join (checked by
//! pydicom), tampered chunks fail with named errors, erasing the case removes every byte, and
//! no attachment byte sequence is found in the database or its WAL.

mod common;

use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use common::api::Api;
use common::{media_py, sha256_hex};
use hema3n_edge::model::Actor;
use hema3n_edge::storage::{Rendition, StoreError};
use serde_json::{Value, json};

const IDLE: &str = "[api]\nidle_timeout_secs = 600\nsession_lifetime_secs = 43200\n";

async fn case(api: &Api, t: &str) -> String {
    let c = api
        .post(t, "/api/v1/cases", Some(json!({"chief_complaint": "fall"})))
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    c.body["id"].as_str().unwrap().to_string()
}

async fn count(api: &Api, sql: &'static str) -> i64 {
    api.query_i64(sql).await
}

async fn content(api: &Api, t: &str, case: &str, aid: &str) -> Vec<u8> {
    let r = api
        .send_bytes(
            "GET",
            &format!("/api/v1/cases/{case}/attachments/{aid}/content"),
            t,
            vec![],
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.raw
}

fn tmp_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A PDF-shaped file of `n` bytes (header, varied body, trailer).
fn pdf_bytes(n: usize) -> Vec<u8> {
    let mut p = b"%PDF-1.7\n".to_vec();
    p.extend((0..n - 16).map(|i| (i * 7 % 251) as u8));
    p.extend_from_slice(b"\n%%EOF\n");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_named_errors_and_leaves_nothing() {
    let api = Api::new(IDLE).await;
    let t = api.login("medic").await;
    let c = case(&api, &t).await;
    let jpeg = {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jpg");
        media_py(&["photo-make", p.to_str().unwrap()]);
        std::fs::read(p).unwrap()
    };
    let mut no_preamble = {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.dcm");
        media_py(&["dicom-make", p.to_str().unwrap()]);
        std::fs::read(p).unwrap()
    };
    no_preamble.drain(..128);
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "scene_photo",
            b"#!/bin/sh\necho this is not a photo\n".repeat(10),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_TYPE",
        ),
        (
            "wound",
            b"%PDF-1.7\n%%EOF\n".repeat(20),
            StatusCode::UNPROCESSABLE_ENTITY,
            "KIND_MISMATCH",
        ),
        (
            "scene_photo",
            jpeg[..jpeg.len() / 2].to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "TRUNCATED_FILE",
        ),
        (
            "ultrasound",
            no_preamble,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "DICOM_NO_PREAMBLE",
        ),
    ];
    for (kind, bytes, status, reason) in cases {
        let r = api.attach(&t, &c, kind, &bytes, 4096).await;
        assert_eq!(r.status, status, "{kind} {reason}: {}", r.body);
        assert_eq!(r.body["error"]["details"]["reason"], reason, "{}", r.body);
    }
    // Zero bytes and oversized are refused at the announcement.
    let path = format!("/api/v1/cases/{c}/attachments");
    let r = api
        .post(&t, &path, Some(json!({"kind": "other", "size": 0})))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["reason"], "EMPTY_FILE");
    let r = api
        .post(
            &t,
            &path,
            Some(json!({"kind": "other", "size": 65u64 << 20})),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    // An upload that sends more than it announced is refused without storing the excess.
    let r = api
        .post(&t, &path, Some(json!({"kind": "ecg", "size": 300})))
        .await;
    let aid = r.body["id"].as_str().unwrap().to_string();
    let r = api.upload_piece(&t, &c, &aid, 0, vec![b'%'; 400]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    // Nothing half-stored: the refused files are gone with every chunk; the open announcement
    // holds no bytes.
    assert_eq!(count(&api, "SELECT count(*) FROM attachments").await, 1);
    assert_eq!(
        count(&api, "SELECT count(*) FROM attachment_chunks").await,
        0
    );
    assert_eq!(
        count(
            &api,
            "SELECT count(*) FROM audit_log WHERE action = 'attachment.refuse'"
        )
        .await,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_resumes_after_a_dropped_link_and_is_stored_without_metadata() {
    let api = Api::new(IDLE).await;
    let t = api.login("medic").await;
    let c = case(&api, &t).await;
    let dir = tempfile::tempdir().unwrap();
    let orig = dir.path().join("scene.jpg");
    media_py(&["photo-make", orig.to_str().unwrap()]);
    let before: Value =
        serde_json::from_str(&media_py(&["photo-check", orig.to_str().unwrap()])).unwrap();
    assert_eq!(
        before["gps"], true,
        "the test photo must carry GPS: {before}"
    );
    let bytes = std::fs::read(&orig).unwrap();
    let r = api
        .post(
            &t,
            &format!("/api/v1/cases/{c}/attachments"),
            Some(json!({"kind": "scene_photo", "caption": "car vs tree", "size": bytes.len()})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let aid = r.body["id"].as_str().unwrap().to_string();
    let piece = 32 * 1024;
    // Two pieces arrive; the third is lost with the link (never sent).
    for i in 0..2 {
        let r = api
            .upload_piece(
                &t,
                &c,
                &aid,
                (i * piece) as u64,
                bytes[i * piece..(i + 1) * piece].to_vec(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    // A client that guesses the offset wrongly is told where to continue.
    let r = api
        .upload_piece(&t, &c, &aid, (3 * piece) as u64, vec![0; 10])
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["received"], 2 * piece);
    // Resume from what the appliance says it has.
    let info = api
        .get(&t, &format!("/api/v1/cases/{c}/attachments/{aid}"))
        .await;
    let at = info.body["received"].as_u64().unwrap() as usize;
    assert_eq!(at, 2 * piece);
    let last = api.upload_from(&t, &c, &aid, &bytes, at, piece, info).await;
    assert_eq!(last.status, StatusCode::OK, "{}", last.body);
    assert_eq!(last.body["state"], "stored", "{}", last.body);
    assert_eq!(last.body["media_type"], "image/jpeg");
    assert_eq!(last.body["orientation"], 6);
    let stripped: Vec<&str> = last.body["stripped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        stripped.contains(&"gps") && stripped.contains(&"xmp"),
        "{stripped:?}"
    );
    // What the appliance serves: no EXIF, no GPS, no XMP (Pillow), hash as recorded.
    let served = content(&api, &t, &c, &aid).await;
    assert_eq!(last.body["sha256"].as_str().unwrap(), sha256_hex(&served));
    let p = tmp_file(dir.path(), "served.jpg", &served);
    let after: Value =
        serde_json::from_str(&media_py(&["photo-check", p.to_str().unwrap()])).unwrap();
    assert_eq!(
        (
            &after["exif_tags"],
            &after["gps"],
            &after["exif_block"],
            &after["xmp"]
        ),
        (&json!(0), &json!(false), &json!(false), &json!(false)),
        "{after}"
    );
    assert_eq!(
        after["size"],
        json!([640, 480]),
        "the image itself is intact"
    );
    for s in ["SentinelCam", "BODY-SERIAL-55501", "SentinelXMP"] {
        assert!(!common::contains(&served, s.as_bytes()), "{s} left");
    }
    // A thumbnail exists and is a small JPEG.
    let th = api
        .send_bytes(
            "GET",
            &format!("/api/v1/cases/{c}/attachments/{aid}/thumbnail"),
            &t,
            vec![],
            &[],
        )
        .await;
    assert_eq!(th.status, StatusCode::OK);
    assert_eq!(th.headers["content-type"], "image/jpeg");
    let p = tmp_file(dir.path(), "thumb.jpg", &th.raw);
    let tc: Value = serde_json::from_str(&media_py(&["photo-check", p.to_str().unwrap()])).unwrap();
    assert_eq!(tc["size"], json!([320, 240]), "{tc}");
    // Staff see no clinical content.
    let s = api.login("staff1").await;
    let r = api
        .get(&s, &format!("/api/v1/cases/{c}/attachments/{aid}/content"))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dicom_object_is_split_from_its_phi_and_rejoins_exactly() {
    let api = Api::new(IDLE).await;
    let t = api.login("medic").await;
    let c = case(&api, &t).await;
    let dir = tempfile::tempdir().unwrap();
    let orig = dir.path().join("echo.dcm");
    media_py(&["dicom-make", orig.to_str().unwrap()]);
    let bytes = std::fs::read(&orig).unwrap();
    let r = api.attach(&t, &c, "ultrasound", &bytes, 1000).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["media_type"], "application/dicom");
    assert_eq!(r.body["sha256"].as_str().unwrap(), sha256_hex(&bytes));
    let aid = r.body["id"].as_str().unwrap().to_string();
    let rejoined = content(&api, &t, &c, &aid).await;
    assert_eq!(
        rejoined, bytes,
        "the re-joined object is the original, byte for byte"
    );
    let (cc, a) = (c.clone(), aid.clone());
    let deid = api
        .st
        .store
        .call(move |db| {
            db.attachment_open(&Actor::system(), &cc, &a, Rendition::Deidentified)
                .map(|o| o.whole.unwrap())
        })
        .await
        .unwrap();
    let d = tmp_file(dir.path(), "deid.dcm", &deid);
    let j = tmp_file(dir.path(), "rejoined.dcm", &rejoined);
    let report: Value = serde_json::from_str(&media_py(&[
        "dicom-check",
        d.to_str().unwrap(),
        orig.to_str().unwrap(),
        j.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(report["phi_left"], json!([]), "{report}");
    assert_eq!(report["deid_modality"], "US");
    assert_eq!(report["deid_pixels"], 64 * 80);
    assert_eq!(report["rejoined_equal"], true, "{report}");
    assert_eq!(report["rejoined_patient"], "Sentinel^Dicomina");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_chunks_fail_with_named_errors() {
    let api = Api::new(IDLE).await;
    let t = api.login("medic").await;
    let c = case(&api, &t).await;
    // Two PDFs of four 256 KiB chunks each.
    let pdf = |fill: u8| {
        let mut p = b"%PDF-1.4\n".to_vec();
        p.extend(std::iter::repeat_n(fill, 4 * 256 * 1024 - 30));
        p.extend_from_slice(b"\n%%EOF\n");
        p
    };
    let a = api.attach(&t, &c, "ecg", &pdf(b'a'), 512 * 1024).await;
    let b = api.attach(&t, &c, "ecg", &pdf(b'b'), 512 * 1024).await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    let (a, b) = (
        a.body["id"].as_str().unwrap().to_string(),
        b.body["id"].as_str().unwrap().to_string(),
    );
    let read_all = |id: String| {
        let (cc, st) = (c.clone(), api.st.store.clone());
        async move {
            st.call(move |db| {
                for i in 0..4 {
                    db.attachment_chunk(&cc, &id, i)?;
                }
                Ok(())
            })
            .await
        }
    };
    read_all(a.clone()).await.unwrap();
    let sql = |s: String| {
        let st = api.st.store.clone();
        async move {
            st.call(move |db| {
                db.raw_connection_for_tests().execute_batch(&s).unwrap();
                Ok(())
            })
            .await
            .unwrap()
        }
    };
    let named = |e: StoreError| e.to_string();
    // Swapped: chunks 1 and 2 trade places.
    sql(format!(
        "UPDATE attachment_chunks SET idx = 99 WHERE attachment_id = '{a}' AND part = 'content' AND idx = 1;
         UPDATE attachment_chunks SET idx = 1 WHERE attachment_id = '{a}' AND part = 'content' AND idx = 2;
         UPDATE attachment_chunks SET idx = 2 WHERE attachment_id = '{a}' AND part = 'content' AND idx = 99;"
    ))
    .await;
    let e = named(read_all(a.clone()).await.unwrap_err());
    assert!(
        e.contains(&format!("chunk 1 of attachment {a} failed authentication")),
        "{e}"
    );
    // Moved: chunk 0 of b replaces chunk 0 of a.
    sql(format!(
        "DELETE FROM attachment_chunks WHERE attachment_id = '{a}' AND idx = 0;
         INSERT INTO attachment_chunks SELECT '{a}', part, idx, body FROM attachment_chunks WHERE attachment_id = '{b}' AND part = 'content' AND idx = 0;"
    ))
    .await;
    let e = named(read_all(a.clone()).await.unwrap_err());
    assert!(
        e.contains(&format!("chunk 0 of attachment {a} failed authentication")),
        "{e}"
    );
    // Truncated: b loses its last chunk; then reordered (count changed to match).
    sql(format!(
        "DELETE FROM attachment_chunks WHERE attachment_id = '{b}' AND idx = 3;"
    ))
    .await;
    let e = named(read_all(b.clone()).await.unwrap_err());
    assert!(
        e.contains(&format!("attachment {b} has 3 of its 4 content chunks")),
        "{e}"
    );
    // Over the API a truncated file is refused before any byte is served.
    let r = api
        .get(&t, &format!("/api/v1/cases/{c}/attachments/{b}/content"))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::INTERNAL_SERVER_ERROR, "ENCRYPTION_ERROR"),
        "{}",
        r.text
    );
    sql(format!(
        "UPDATE attachments SET chunk_count = 3 WHERE id = '{b}';"
    ))
    .await;
    let (cc, bb) = (c.clone(), b.clone());
    let e = api
        .st
        .store
        .call(move |db| db.attachment_chunk(&cc, &bb, 0))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("failed authentication"),
        "a count changed behind the store's back: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_attachment_bytes_in_the_database_or_wal_and_erasure_removes_them() {
    let api = Api::new(IDLE).await;
    let t = api.login("medic").await;
    let c = case(&api, &t).await;
    let marker = b"ATTACHMENT-SENTINEL-7f3c9e";
    let mut pdf = b"%PDF-1.4\n".to_vec();
    for _ in 0..2000 {
        pdf.extend_from_slice(marker);
    }
    pdf.extend_from_slice(b"\n%%EOF\n");
    let r = api.attach(&t, &c, "signed_form", &pdf, 8 * 1024).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let files = common::files_below(&api.app.dir);
    assert!(files.iter().any(|f| f.to_string_lossy().ends_with("-wal")));
    for f in &files {
        let b = std::fs::read(f).unwrap_or_default();
        assert!(
            !common::contains(&b, marker),
            "attachment bytes in {}",
            f.display()
        );
        assert!(
            !common::contains(&b, b"%PDF-1.4"),
            "attachment bytes in {}",
            f.display()
        );
    }
    let cc = c.clone();
    api.st
        .store
        .call(move |db| db.erase_case(&Actor::system(), &cc))
        .await
        .unwrap();
    assert_eq!(count(&api, "SELECT count(*) FROM attachments").await, 0);
    assert_eq!(
        count(&api, "SELECT count(*) FROM attachment_chunks").await,
        0
    );
}

#[test]
fn the_cli_attaches_a_dicom_object_and_exports_both_forms() {
    let a = common::Appliance::init();
    let case = a.ok(&["cases", "open", "--chief-complaint", "abdominal pain"]);
    let case = case.trim().rsplit(' ').next().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let orig = dir.path().join("fast-exam.dcm");
    media_py(&["dicom-make", orig.to_str().unwrap()]);
    let bytes = std::fs::read(&orig).unwrap();
    let out = a.ok(&[
        "cases",
        "attach",
        &case,
        orig.to_str().unwrap(),
        "--kind",
        "ultrasound",
        "--caption",
        "FAST",
    ]);
    assert!(
        out.contains("application/dicom") && out.contains(&sha256_hex(&bytes)),
        "{out}"
    );
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let full = dir.path().join("full.dcm");
    let deid = dir.path().join("deid.dcm");
    a.ok(&[
        "cases",
        "attachment-export",
        &case,
        &id,
        "--out",
        full.to_str().unwrap(),
    ]);
    a.ok(&[
        "cases",
        "attachment-export",
        &case,
        &id,
        "--out",
        deid.to_str().unwrap(),
        "--deidentified",
    ]);
    assert_eq!(std::fs::read(&full).unwrap(), bytes);
    let report: Value = serde_json::from_str(&media_py(&[
        "dicom-check",
        deid.to_str().unwrap(),
        orig.to_str().unwrap(),
        full.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(report["phi_left"], json!([]), "{report}");
    // A wrong type is refused with its code and exit status 1; nothing is kept.
    let txt = tmp_file(
        dir.path(),
        "notes.txt",
        b"not a photo at all, just some words here",
    );
    let o = a.run(&[
        "cases",
        "attach",
        &case,
        txt.to_str().unwrap(),
        "--kind",
        "wound",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("plain text files are not accepted"), "{err}");
    assert_eq!(a.query_i64("SELECT count(*) FROM attachments"), 1);
}

/// The store's connection may grow the database to `pages` pages at most (SQLite then answers
/// SQLITE_FULL, as on a full disk).
async fn cap_database_pages(api: &Api, pages: i64) {
    api.st
        .store
        .call(move |db| {
            db.raw_connection_for_tests()
                .pragma_update(None, "max_page_count", pages)
                .unwrap();
            Ok(())
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_the_piece_by_name_and_keeps_the_case_intact() {
    let api = Api::new(IDLE).await;
    let t = api.login("medic").await;
    let c = case(&api, &t).await;
    let first = api
        .attach(&t, &c, "ecg", &pdf_bytes(40_000), 16 * 1024)
        .await;
    assert_eq!(first.body["state"], "stored", "{}", first.body);
    let doc = pdf_bytes(600_000);
    let r = api
        .post(
            &t,
            &format!("/api/v1/cases/{c}/attachments"),
            Some(json!({"kind": "signed_form", "size": doc.len()})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let aid = r.body["id"].as_str().unwrap().to_string();
    let piece = 64 * 1024;
    let r = api
        .upload_piece(&t, &c, &aid, 0, doc[..piece].to_vec())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The disk fills up: no room for one more piece.
    let pages = api
        .query_i64("SELECT page_count FROM pragma_page_count()")
        .await;
    cap_database_pages(&api, pages + 2).await;
    let r = api
        .upload_piece(&t, &c, &aid, piece as u64, doc[piece..2 * piece].to_vec())
        .await;
    assert_eq!(r.status, StatusCode::INSUFFICIENT_STORAGE, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "DISK_FULL", "{}", r.body);
    // Nothing of the refused piece is kept; the case, its stored file and the upload so far are
    // intact and readable.
    let info = api
        .get(&t, &format!("/api/v1/cases/{c}/attachments/{aid}"))
        .await;
    assert_eq!(info.body["received"], piece, "{}", info.body);
    let stored = first.body["id"].as_str().unwrap();
    assert_eq!(
        sha256_hex(&content(&api, &t, &c, stored).await),
        first.body["sha256"].as_str().unwrap()
    );
    assert_eq!(
        api.get(&t, &format!("/api/v1/cases/{c}")).await.status,
        StatusCode::OK
    );
    // Room again (an administrator cleared the disk): the upload resumes where it stopped.
    cap_database_pages(&api, 1 << 30).await;
    let last = api
        .upload_from(&t, &c, &aid, &doc, piece, piece, info)
        .await;
    assert_eq!(last.status, StatusCode::OK, "{}", last.body);
    assert_eq!(last.body["state"], "stored", "{}", last.body);
    assert_eq!(
        sha256_hex(&content(&api, &t, &c, &aid).await),
        sha256_hex(&doc)
    );
    assert_eq!(
        api.query_i64("SELECT count(*) FROM attachments WHERE state = 'stored'")
            .await,
        2
    );
}
