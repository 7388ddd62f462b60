//! The crew tablet in a real browser: headless Debian Chromium driven by Playwright
//! (tests/browser/flow.cjs) against the real daemon over HTTPS, with a real broker, a simulated
//! monitor, the ONNX model and the cloud receiver. Screenshots go to docs/screenshots/.
//! Attachments: a camera photo with GPS EXIF and a 12-lead PDF made by Pillow (independent of
//! our code), checked again by Pillow as the tablet showed them and as the cloud exports them.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::broker::{Broker, wait_for};
use common::cloud::synced_appliance;
use common::{Appliance, BIN, media_py, ort_lib, sha256_hex};
use serde_json::Value;

const PIN: &str = "pin-7391";
const IDLE_SECS: u64 = 20;

fn add_user(a: &Appliance, id: &str, role: &str) {
    let mut c = a.cmd(&[
        "users",
        "add",
        id,
        "--name",
        &format!("Demo {role}"),
        "--role",
        role,
    ]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{PIN}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn crew_flow_in_chromium() {
    let node_modules = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/node/node_modules");
    assert!(
        node_modules.join("playwright-core").exists() && Path::new("/usr/bin/chromium").exists(),
        "playwright-core or chromium missing: run ./scripts/test.sh (installs both)"
    );
    let broker = Broker::start();
    let (a, receiver, _cloud, _pki) = synced_appliance(
        &broker,
        &common::triage_toml(
            &ort_lib().display().to_string(),
            &format!(
                "debounce_ms = 50\n[api]\nidle_timeout_secs = {IDLE_SECS}\n[attachments]\nmax_piece_kib = 64\n"
            ),
        ),
    );
    let _rx = receiver.spawn();
    add_user(&a, "medic1", "paramedic");
    add_user(&a, "desk1", "staff");
    add_user(&a, "super1", "supervisor");
    a.ok(&["devices", "add", "mon-1"]);
    let _daemon = a.start_daemon();
    let port = a.api_port();
    // The monitor publishes before the crew binds it (its readings wait, encrypted, unbound).
    let mut sim = Command::new(BIN)
        .args(["--config"])
        .arg(a.config_path())
        .args([
            "simulate",
            "--broker",
            &broker.url(),
            "--device-prefix",
            "mon-",
            "--devices",
            "1",
            "--scenario",
            "sepsis",
            "--interval-ms",
            "500",
            "--duration-secs",
            "300",
            "--scenario-secs",
            "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(30, "first readings of the simulated monitor", || {
        (a.query_i64("SELECT count(*) FROM observations WHERE device_id = 'mon-1'") > 0)
            .then_some(())
    });
    // A 1600×1200 camera photo with EXIF (GPS, serial, orientation 6) and XMP: pieces of 64 KiB.
    let photo = a.tmp.path().join("scene.jpg");
    media_py(&["photo-make", photo.to_str().unwrap(), "1600", "1200"]);
    let ecg = a.tmp.path().join("12-lead.pdf");
    media_py(&["ecg-pdf", ecg.to_str().unwrap()]);
    let shown = a.tmp.path().join("shown-photo.jpg");
    let shots = std::env::var("HEMA3N_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| a.tmp.path().join("shots"));
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/flow.cjs"))
        .env("NODE_PATH", &node_modules)
        .env("H3N_URL", format!("https://127.0.0.1:{port}/"))
        .env("H3N_USER", "medic1")
        .env("H3N_STAFF", "desk1")
        .env("H3N_SUPERVISOR", "super1")
        .env("H3N_PIN", PIN)
        .env("H3N_TERRITORY", "default")
        .env("H3N_IDLE_SECS", IDLE_SECS.to_string())
        .env("H3N_SHOTS", &shots)
        .env("H3N_CASE_FILE", a.tmp.path().join("case-id"))
        .env("H3N_PDF_FILE", a.tmp.path().join("handoff.pdf"))
        .env("H3N_PHOTO", &photo)
        .env("H3N_ECG_PDF", &ecg)
        .env("H3N_STORED_PHOTO", &shown)
        .output()
        .unwrap();
    let _ = sim.kill();
    let _ = sim.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("[browser] ok"),
        "browser flow failed:\n{stdout}\n{}\n--- daemon log (tail) ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.daemon_log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // What the browser did is in the audit trail: logins, the idle logoff, the staff denial.
    assert!(a.query_i64("SELECT count(*) FROM audit_log WHERE action = 'login.success'") >= 2);
    let trail: String = a
        .open()
        .raw_connection_for_tests()
        .query_row(
            "SELECT group_concat(action || ':' || details, ' | ') FROM audit_log WHERE actor = 'medic1' AND action LIKE 'log%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        trail.contains("logout:"),
        "medic1's session must end server-side: {trail}"
    );
    assert!(
        a.query_i64(
            "SELECT count(*) FROM audit_log WHERE action = 'access.denied' AND actor = 'desk1'"
        ) >= 1
    );
    assert_eq!(
        a.query_i64("SELECT count(*) FROM cases WHERE status = 'closed'"),
        1
    );
    // The receipted bundle in the cloud holds every part of the call the crew recorded.
    let case = std::fs::read_to_string(a.tmp.path().join("case-id")).unwrap();
    let list = receiver.ok(&["bundles"]);
    let row = list
        .lines()
        .find(|l| l.ends_with("\tbundle"))
        .unwrap_or_else(|| panic!("no case bundle in the receiver:\n{list}"));
    let id = row.split('\t').take(2).collect::<Vec<_>>().join("/");
    let body: serde_json::Value = serde_json::from_str(&receiver.ok(&["bundles", &id])).unwrap();
    assert!(
        body.to_string().contains(case.trim()),
        "bundle of another case"
    );
    let kinds: Vec<String> = body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_string())
        .collect();
    for want in [
        "Patient",
        "Encounter",
        "Condition",
        "AllergyIntolerance",
        "MedicationAdministration",
        "Procedure",
        "Location",
        "Practitioner",
        "DocumentReference",
        "Media",
    ] {
        assert!(kinds.iter().any(|k| k == want), "{want} missing: {kinds:?}");
    }
    let text = body.to_string();
    for want in [
        "Grace",
        "J44.1",
        "penicillin",
        "\"435\"",
        "392230005",
        "3151-8",
        "Logan Regional Hospital",
        "Dr. R. Patel",
        "12 Elm St, Logan UT",
        "\"latitude\":41.7365",
        "urn:hema3n:fhir:etime:transfer_of_care",
    ] {
        assert!(
            text.contains(want),
            "{want} missing from the receipted bundle"
        );
    }
    // The hand-entered glucose marked entered-in-error did not travel (the monitor's did).
    let glucose = hema3n_edge::vocab::lookup("glucose").unwrap().loinc;
    let manual_glucose = body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Observation" && r["code"]["coding"][0]["code"] == glucose)
        .filter(|r| r.get("device").is_none())
        .count();
    assert_eq!(manual_glucose, 0, "entered-in-error reading in the bundle");
    let f = a.tmp.path().join("receipted.json");
    std::fs::write(&f, body.to_string()).unwrap();
    common::cloud::fhir_validate(&[f]);
    // And its NEMSIS document, as the agency submits it from the cloud.
    let xml = receiver.ok(&["bundles", &id, "--nemsis"]);
    let f = a.tmp.path().join("receipted-nemsis.xml");
    std::fs::write(&f, &xml).unwrap();
    common::record::assert_nemsis_valid(&[f]);
    assert!(xml.contains("<eSituation.11>J44.1</eSituation.11>"));
    // The handoff document the crew downloaded says what the hospital needs.
    let pdf = std::fs::read(a.tmp.path().join("handoff.pdf")).expect("the PDF was downloaded");
    let text = common::pdf_text(&pdf);
    for want in [
        "SBAR",
        "Triage ESI",
        "Salbutamol",
        "IV access",
        "Call received",
        "Logan Regional Hospital",
        "penicillin",
    ] {
        assert!(
            text.contains(want),
            "{want} missing from the handoff PDF:\n{text}"
        );
    }
    assert!(
        a.query_i64(
            "SELECT count(*) FROM audit_log WHERE action = 'case.disclose' AND details LIKE '%handoff-pdf-sbar%'"
        ) == 1,
        "the download is audited as a disclosure"
    );
    // The receipted bundle carries the handoff as handed over (SHA-256 checked on the way out).
    let carried = hema3n_edge::sync::handoff_pdf(&body).expect("handoff PDF in the bundle");
    let text = common::pdf_text(&carried);
    assert!(
        text.contains("Dr. R. Patel") && text.contains("ED attending"),
        "transfer of care missing from the carried PDF:\n{text}"
    );
    // It states the triage reasons the bundle's RiskAssessment records (both built at close).
    let reasons: Vec<String> = body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "RiskAssessment")
        .flat_map(|r| r["note"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n["text"].as_str().map(str::to_string))
        .collect();
    assert!(!reasons.is_empty(), "the triage has reasons");
    for r in &reasons {
        let head: String = r.chars().take(25).collect();
        assert!(
            text.contains(&head),
            "reason `{r}` missing from the carried PDF:\n{text}"
        );
    }
    common::pdf_first_page_png(&carried, &shots.join("handoff-pdf.png"));
    attachments_in_the_cloud(&a, &receiver, &body, &photo, &ecg, &shown);
}

/// What Pillow finds in a photo: no EXIF block, tag, GPS position or XMP may be left.
fn assert_no_photo_metadata(f: &Path, what: &str) {
    let v: Value = serde_json::from_str(&media_py(&["photo-check", f.to_str().unwrap()])).unwrap();
    assert_eq!(v["format"], "JPEG", "{what}: {v}");
    assert_eq!(v["size"], serde_json::json!([1600, 1200]), "{what}: {v}");
    assert_eq!(v["exif_tags"], 0, "{what}: {v}");
    assert_eq!(v["gps"], false, "{what}: {v}");
    assert_eq!(v["exif_block"], false, "{what}: {v}");
    assert_eq!(v["xmp"], false, "{what}: {v}");
}

/// The photo and the ECG strip the crew attached from the tablet, in the cloud: complete, the
/// same bytes the tablet showed (photo) or the crew picked (PDF), named by the case bundle.
fn attachments_in_the_cloud(
    a: &Appliance,
    receiver: &common::cloud::Receiver,
    bundle: &Value,
    photo: &Path,
    ecg: &Path,
    shown: &Path,
) {
    // The original really carried what must go.
    let orig: Value =
        serde_json::from_str(&media_py(&["photo-check", photo.to_str().unwrap()])).unwrap();
    assert!(orig["gps"] == true && orig["xmp"] == true, "{orig}");
    assert_no_photo_metadata(shown, "the photo as the tablet showed it");
    let list: Vec<Value> = wait_for(120, "both attachments complete in the cloud", || {
        let l: Vec<Value> = receiver
            .ok(&["attachments"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (l.len() == 2 && l.iter().all(|x| x["state"] == "complete")).then_some(l)
    });
    let bundle_text = bundle.to_string();
    for item in &list {
        let which = format!(
            "{}/{}",
            item["appliance_id"].as_str().unwrap(),
            item["attachment_id"].as_str().unwrap()
        );
        let out = a
            .tmp
            .path()
            .join(format!("exported-{}", item["kind"].as_str().unwrap()));
        receiver.ok(&[
            "attachments",
            "--export",
            &which,
            "--out",
            out.to_str().unwrap(),
        ]);
        let got = std::fs::read(&out).unwrap();
        let sha = item["sha256"].as_str().unwrap();
        assert_eq!(
            sha256_hex(&got),
            sha,
            "{which}: export vs the receiver's hash"
        );
        assert!(
            bundle_text.contains(sha),
            "the case bundle names {which} by its SHA-256"
        );
        match item["kind"].as_str().unwrap() {
            "scene_photo" => {
                assert_eq!(
                    got,
                    std::fs::read(shown).unwrap(),
                    "synced photo ≠ stored photo"
                );
                assert_no_photo_metadata(&out, "the photo the cloud exports");
            }
            "ecg" => assert_eq!(
                sha,
                sha256_hex(&std::fs::read(ecg).unwrap()),
                "the PDF changed"
            ),
            other => panic!("unexpected attachment kind {other}"),
        }
    }
    // Every view was audited; the refused GIF too, by its reason.
    assert!(
        a.query_i64(
            "SELECT count(*) FROM audit_log WHERE action = 'attachment.view' AND actor = 'medic1'"
        ) >= 2
    );
    assert_eq!(
        a.query_i64("SELECT count(*) FROM audit_log WHERE action = 'attachment.refuse'"),
        1
    );
    assert_eq!(
        a.query_i64("SELECT count(*) FROM attachments WHERE state = 'stored'"),
        2
    );
}
