//! Hospital pre-alerts end to end on real parts: the daemon (rules-only triage, so the levels
//! are the rules' and deterministic), its HTTPS API, two mosquitto brokers and the real
//! `hema3n-receiver`. A crew records vitals that reach ESI 2, then ESI 1, then names the
//! destination and an ETA: each step is a new pre-alert that replaces the one before, and the
//! receiver chains all three to the first and shows the latest (`prealerts --json`). The
//! pre-alerts validate as FHIR R4 under the independent validator.

mod common;

use common::Appliance;
use common::broker::{Broker, wait_for};
use common::cloud::{Pki, Receiver, enable_sync, fhir_validate};
use hema3n_edge::model::{Actor, Role};
use serde_json::{Value, json};
use tokio_rustls::TlsConnector;

const PIN: &str = "pin-4829";

struct Client {
    port: u16,
    tls: TlsConnector,
    token: Option<String>,
}

impl Client {
    /// One request on a fresh connection: status and JSON body (`null` when there is none).
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut s = common::https::connect(self.port, &self.tls).await;
        let (status, bytes) =
            common::https::request(&mut s, method, path, self.token.as_deref(), body).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// Pre-alerts of the case the receiver lists, as `prealerts --json` prints them.
fn chain(r: &Receiver, case: &str) -> Option<Value> {
    r.ok(&["prealerts", "--json"])
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|c| c["case_id"] == case)
}

fn links(c: &Option<Value>) -> usize {
    c.as_ref()
        .and_then(|c| c["links"].as_array())
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esi_escalation_and_a_new_destination_update_the_prealert_chain() {
    let pki = Pki::new();
    let (cloud, _) = pki.broker();
    let onboard = Broker::start();
    let a = Appliance::with_broker(
        &onboard.url(),
        // No model here: the rules decide, so ESI follows the vitals exactly.
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
    enable_sync(&a, &pki, &cloud, "");
    let mut recv = r.spawn();
    let mut daemon = a.start_daemon();
    let cert = a.dir.join("keys/api-cert.pem");
    let mut c = Client {
        port: a.api_port(),
        tls: TlsConnector::from(hema3n_edge::tls::client_config(&cert, None).unwrap()),
        token: None,
    };
    let (s, login) = c
        .call(
            "POST",
            "/api/v1/auth/login",
            Some(json!({"user_id": "medic", "secret": PIN})),
        )
        .await;
    assert_eq!(s, 200, "{login}");
    c.token = Some(login["token"].as_str().unwrap().to_string());
    let (s, created) = c
        .call(
            "POST",
            "/api/v1/cases",
            Some(json!({"chief_complaint": "short of breath"})),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let case = created["id"].as_str().unwrap().to_string();
    let vitals = |spo2: f64| json!({"readings": [{"name": "spo2", "value": spo2}]});
    let esi = |a: &Appliance| {
        a.query_i64(&format!(
            "SELECT final_esi FROM triage_results WHERE case_id = '{case}' ORDER BY id DESC LIMIT 1"
        ))
    };

    // 1. SpO2 91 %: ESI 2 (danger-zone saturation) → the first pre-alert.
    let (s, b) = c
        .call(
            "POST",
            &format!("/api/v1/cases/{case}/vitals"),
            Some(vitals(91.0)),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    wait_for(60, "first pre-alert at the receiver", || {
        (links(&chain(&r, &case)) == 1).then_some(())
    });
    assert_eq!(esi(&a), 2);

    // 2. SpO2 80 %: ESI 1 (severe hypoxia) → an update that replaces the first.
    let (s, b) = c
        .call(
            "POST",
            &format!("/api/v1/cases/{case}/vitals"),
            Some(vitals(80.0)),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    wait_for(60, "ESI 1 update at the receiver", || {
        (links(&chain(&r, &case)) == 2).then_some(())
    });
    assert_eq!(esi(&a), 1);

    // 3. The crew names the destination and an ETA: another update.
    let eta = hema3n_edge::model::now_ms() + 12 * 60_000;
    let (s, b) = c
        .call(
            "PATCH",
            &format!("/api/v1/cases/{case}/record/disposition"),
            Some(json!({"destination": "St Mary's Emergency Department", "eta_ms": eta, "alerts": ["sepsis"]})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    wait_for(60, "destination update at the receiver", || {
        (links(&chain(&r, &case)) == 3).then_some(())
    });

    let ch = chain(&r, &case).unwrap();
    let l = ch["links"].as_array().unwrap();
    let reasons = |i: usize| l[i]["summary"]["reasons"].clone();
    assert_eq!(reasons(0), json!(["esi 2"]));
    assert_eq!(reasons(1), json!(["esi 2 → 1"]));
    assert_eq!(reasons(2), json!(["alert sepsis", "destination", "eta"]));
    // Each link replaces the one before; the first replaces nothing.
    assert!(l[0]["summary"]["replaces"].is_null());
    for i in 1..3 {
        assert_eq!(
            l[i]["summary"]["replaces"],
            l[i - 1]["bundle_id"],
            "link {i}"
        );
    }
    let latest = &l[2]["summary"];
    assert_eq!(latest["esi"], 1);
    assert_eq!(latest["destination"], "St Mary's Emergency Department");
    assert_eq!(latest["eta_ms"], eta);
    assert_eq!(latest["alerts"], json!(["Sepsis alert"]));
    // The human view names the latest and the whole chain.
    let text = r.ok(&["prealerts"]);
    assert!(
        text.contains("ESI 1") && text.contains("St Mary's"),
        "{text}"
    );
    assert!(
        text.contains("3 pre-alerts:") && !text.contains("gap"),
        "{text}"
    );

    // Every pre-alert is valid FHIR R4 and carries no name.
    let mut files = vec![];
    for (i, link) in l.iter().enumerate() {
        let id = format!(
            "{}/{}",
            ch["appliance_id"].as_str().unwrap(),
            link["bundle_id"].as_str().unwrap()
        );
        let body = r.ok(&["bundles", &id]);
        assert!(!body.contains("\"family\""), "{body}");
        let f = r.tmp.path().join(format!("prealert-{i}.json"));
        std::fs::write(&f, body).unwrap();
        files.push(f);
    }
    let report = fhir_validate(&files);
    assert!(
        report.matches("Composition=1").count() == 3 && report.contains("Flag=1"),
        "{report}"
    );
    // A repeated identical patch changes nothing and sends nothing.
    let (s, _) = c
        .call(
            "PATCH",
            &format!("/api/v1/cases/{case}/record/disposition"),
            Some(json!({"destination": "St Mary's Emergency Department"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        a.query_i64(&format!(
            "SELECT count(*) FROM prealerts WHERE case_id = '{case}'"
        )),
        3
    );
    assert!(daemon.stop().success(), "{}", a.daemon_log());
    assert!(recv.stop().success(), "{}", r.log());
}
