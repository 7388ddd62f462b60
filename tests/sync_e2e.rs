//! Contract C end to end on real parts: the daemon, two mosquitto brokers (on-board, and a
//! "cloud" one with mutual TLS), and the real `hema3n-receiver`. Cases are closed while the cloud
//! broker is down and while the daemon and the receiver are SIGKILLed at random points; in the
//! end every bundle is stored exactly once, every outbox row is receipted, nothing is lost, and
//! the stored bundles validate as FHIR R4 with an independent validator. The appliance's
//! telemetry (its backlog and how long the oldest envelope has waited) reaches the receiver's
//! `/metrics`.

mod common;

use std::time::Duration;

use common::broker::{Broker, wait_for};
use common::cloud::{Pki, Receiver, enable_sync, fhir_validate};
use common::{Appliance, Rng};

fn receipted(a: &Appliance) -> i64 {
    a.query_i64("SELECT count(*) FROM outbox WHERE state = 'receipted'")
}

#[test]
fn closed_cases_reach_the_cloud_exactly_once_through_outages_and_kill9() {
    let rounds: usize = std::env::var("HEMA3N_SYNC_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed = std::env::var("HEMA3N_SYNC_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_cafe_u64);
    eprintln!("schedule seed {seed} ({rounds} rounds)");
    let mut rng = Rng(seed);

    let pki = Pki::new();
    let (mut cloud, _) = pki.broker();
    let onboard = Broker::start();
    let a = Appliance::with_broker(&onboard.url(), "[triage]\nenabled = false\n");
    let r = Receiver::init(&pki, &cloud);
    r.pair(&a);
    enable_sync(&a, &pki, &cloud, "");
    let check = a.ok(&["check"]);
    for want in [
        "ok      receiver keys of test-cloud",
        "ok      cloud TLS files",
        "reachable",
    ] {
        assert!(check.contains(want), "{want}:\n{check}");
    }
    let cases: Vec<String> = a
        .soak(rounds as u64 * 4, "Custody")
        .into_iter()
        .map(|(_, c)| c)
        .collect();

    let mut recv = r.spawn();
    let mut daemon = a.start_daemon();
    let mut closed = 0;
    let close = |n: usize, closed: &mut usize| {
        for _ in 0..n {
            a.ok(&["cases", "close", &cases[*closed]]);
            *closed += 1;
        }
    };
    for _ in 0..rounds {
        close(3, &mut closed);
        // Let the pipeline reach a random point, then strike.
        std::thread::sleep(Duration::from_millis(rng.next() % 400));
        match rng.next() % 4 {
            0 => {
                daemon.kill9();
                daemon = a.start_daemon();
            }
            1 => {
                recv.kill9();
                recv = r.spawn();
            }
            2 => {
                // Cloud outage: cases closed meanwhile are sealed and wait in the outbox.
                cloud.pause();
                let before = a.query_i64("SELECT count(*) FROM outbox WHERE kind = 'bundle'");
                close(1, &mut closed);
                wait_for(30, "bundle sealed while the cloud is down", || {
                    (a.query_i64("SELECT count(*) FROM outbox WHERE kind = 'bundle'") > before)
                        .then_some(())
                });
                cloud.resume();
            }
            _ => {
                daemon.kill9();
                recv.kill9();
                std::thread::sleep(Duration::from_millis(rng.next() % 200));
                recv = r.spawn();
                daemon = a.start_daemon();
            }
        }
    }
    let closed = closed as i64;
    wait_for(180, "every bundle receipted", || {
        assert!(daemon.running(), "daemon died:\n{}", a.daemon_log());
        assert!(recv.running(), "receiver died:\n{}", r.log());
        (receipted(&a) == closed).then_some(())
    });

    // Exactly once on the cloud side, zero lost, no conflicts.
    let stats = r.stats();
    assert_eq!(stats["bundles"], closed, "{stats}");
    assert_eq!(stats["conflicts"], 0, "{stats}");
    assert_eq!(
        a.query_i64("SELECT count(*) FROM outbox WHERE kind = 'bundle'"),
        closed
    );
    assert_eq!(
        a.query_i64("SELECT count(DISTINCT case_id) FROM outbox WHERE kind = 'bundle'"),
        closed
    );
    // Every custody step is in the audit trail, once per bundle where it must be.
    for (action, want) in [
        ("bundle.create", closed),
        ("bundle.seal", closed),
        ("bundle.queue", closed),
        ("bundle.receipt", closed),
    ] {
        assert_eq!(
            a.query_i64(&format!(
                "SELECT count(*) FROM audit_log WHERE action = '{action}'"
            )),
            want,
            "{action}"
        );
    }
    assert!(
        a.query_i64("SELECT count(DISTINCT resource) FROM audit_log WHERE action = 'bundle.send'")
            == closed
    );
    a.ok(&["audit", "verify"]);

    // The stored bundles are FHIR R4.
    let listed = r.ok(&["bundles"]);
    let mut files = vec![];
    for (i, line) in listed.lines().take(3).enumerate() {
        let mut it = line.split('\t');
        let (app, bid) = (it.next().unwrap(), it.next().unwrap());
        let body = r.ok(&["bundles", &format!("{app}/{bid}")]);
        assert!(body.contains("\"resourceType\":\"Bundle\""));
        assert!(
            body.contains("Custody"),
            "demographics travel in the case bundle"
        );
        let f = r.tmp.path().join(format!("bundle-{i}.json"));
        std::fs::write(&f, body).unwrap();
        files.push(f);
    }
    let report = fhir_validate(&files);
    assert!(report.contains("Patient=1"), "{report}");
    assert!(report.contains("AuditEvent="), "{report}");

    assert!(daemon.stop().success(), "{}", a.daemon_log());
    assert!(recv.stop().success(), "{}", r.log());
}

#[test]
fn disk_pressure_raises_an_alarm_and_nothing_is_dropped() {
    let pki = Pki::new();
    let (cloud, _) = pki.broker();
    let onboard = Broker::start();
    // A threshold no disk meets: the alarm must rise at the first check.
    let a = Appliance::with_broker(
        &onboard.url(),
        "[triage]\nenabled = false\n[sync]\ndisk_alarm_free_mib = 1000000000000\n",
    );
    let r = Receiver::init(&pki, &cloud);
    r.pair(&a); // receiver keys installed, no cloud broker configured: seal and hold
    let case = a.soak(1, "Pressure")[0].1.clone();
    let mut daemon = a.start_daemon();
    a.raised_alarm("disk_pressure");
    a.ok(&["cases", "close", &case]);
    wait_for(30, "the bundle sealed and held despite the alarm", || {
        (a.query_i64("SELECT count(*) FROM outbox WHERE kind = 'bundle' AND state = 'queued'") == 1)
            .then_some(())
    });
    assert!(
        a.daemon_log().contains("ALARM disk pressure"),
        "{}",
        a.daemon_log()
    );
    assert_eq!(
        a.query_i64("SELECT count(*) FROM audit_log WHERE action = 'alarm.raise'"),
        1
    );
    assert!(daemon.stop().success(), "{}", a.daemon_log());
}

#[test]
fn a_patient_reaching_esi_2_sends_a_minimum_necessary_prealert_first() {
    let pki = Pki::new();
    let (cloud, _) = pki.broker();
    let onboard = Broker::start();
    let a = Appliance::with_broker(
        &onboard.url(),
        &common::triage_toml(
            &common::ort_lib().display().to_string(),
            "debounce_ms = 50\n",
        ),
    );
    let r = Receiver::init(&pki, &cloud);
    r.pair(&a);
    enable_sync(&a, &pki, &cloud, "");
    a.ok(&["devices", "add", "mon-1"]);
    let case = a.soak(1, "Prealert")[0].1.clone();
    a.ok(&["devices", "bind", "mon-1", &case]);
    let mut recv = r.spawn();
    let mut daemon = a.start_daemon();
    a.ok(&[
        "simulate",
        "--broker",
        &onboard.url(),
        "--device-prefix",
        "mon-",
        "--scenario",
        "shock",
        "--count",
        "20",
        "--interval-ms",
        "20",
        "--scenario-secs",
        "1",
    ]);
    wait_for(60, "pre-alert receipted", || {
        (a.query_i64(&format!(
            "SELECT count(*) FROM outbox WHERE case_id = '{case}' AND kind = 'prealert' AND state = 'receipted'"
        )) >= 1)
            .then_some(())
    });
    // Closing the case afterwards sends the full bundle; the pre-alert came first.
    a.ok(&["cases", "close", &case]);
    wait_for(60, "case bundle receipted", || {
        (a.query_i64(&format!(
            "SELECT count(*) FROM outbox WHERE case_id = '{case}' AND kind = 'bundle' AND state = 'receipted'"
        )) == 1)
            .then_some(())
    });
    // One pre-alert per change worth telling the hospital (ESI 2, then 1 as the patient
    // worsens), never one per reading.
    let n = a.query_i64(&format!(
        "SELECT count(*) FROM outbox WHERE case_id = '{case}' AND kind = 'prealert'"
    ));
    assert!((1..=2).contains(&n), "{n} pre-alerts");
    let listed = r.ok(&["bundles"]);
    let pre = listed
        .lines()
        .find(|l| l.ends_with("\tprealert"))
        .expect("pre-alert stored by the receiver");
    let mut it = pre.split('\t');
    let (app, bid) = (it.next().unwrap(), it.next().unwrap());
    let body = r.ok(&["bundles", &format!("{app}/{bid}")]);
    assert!(body.contains("RiskAssessment") && body.contains("urn:hema3n:esi"));
    // Minimum necessary: no patient name, no direct identifiers (the chief complaint stays).
    assert!(
        !body.contains("\"family\"") && !body.contains("us-ssn"),
        "{body}"
    );
    let f = r.tmp.path().join("prealert.json");
    std::fs::write(&f, &body).unwrap();
    let report = fhir_validate(&[f]);
    assert!(
        report.contains("RiskAssessment=1") && report.contains("Observation="),
        "{report}"
    );
    assert!(daemon.stop().success(), "{}", a.daemon_log());
    assert!(recv.stop().success(), "{}", r.log());
}

#[test]
fn a_case_that_cannot_be_sealed_is_reported_and_does_not_hold_up_the_others() {
    let pki = Pki::new();
    let (cloud, _) = pki.broker();
    let onboard = Broker::start();
    let a = Appliance::with_broker(&onboard.url(), "[triage]\nenabled = false\n");
    let r = Receiver::init(&pki, &cloud);
    r.pair(&a); // no cloud broker: seal and hold
    let ids: Vec<String> = a.soak(2, "Sealing").into_iter().map(|(_, c)| c).collect();
    let (bad, good) = (&ids[0], &ids[1]);
    // Move the good case's chief-complaint ciphertext onto the bad case: it must fail to open.
    {
        let db = a.open();
        db.raw_connection_for_tests()
            .execute(
                "UPDATE cases SET chief_complaint = (SELECT chief_complaint FROM cases WHERE id = ?2) WHERE id = ?1",
                [bad, good],
            )
            .unwrap();
    }
    a.ok(&["cases", "close", bad]);
    a.ok(&["cases", "close", good]);
    let mut daemon = a.start_daemon();
    wait_for(30, "the good case sealed", || {
        (a.query_i64(&format!(
            "SELECT count(*) FROM outbox WHERE case_id = '{good}' AND kind = 'bundle'"
        )) == 1)
            .then_some(())
    });
    wait_for(30, "the bad case reported", || {
        a.daemon_log()
            .contains("cannot seal this case")
            .then_some(())
    });
    assert!(a.daemon_log().contains(bad.as_str()));
    assert_eq!(
        a.query_i64(&format!(
            "SELECT count(*) FROM outbox WHERE case_id = '{bad}'"
        )),
        0
    );
    assert!(daemon.running(), "the daemon keeps running");
    assert!(daemon.stop().success(), "{}", a.daemon_log());
}

/// The appliance's telemetry reaches the receiver and its `/metrics`: the parameter names agree
/// on both sides (docs/bundle-format.md "Telemetry"), and a telemetry envelope sealed while a case
/// bundle waits for its receipt says how long it has waited.
#[test]
fn telemetry_reports_the_appliance_backlog_to_the_receivers_metrics() {
    let onboard = Broker::start();
    let (a, r, _cloud, _pki) =
        common::cloud::synced_appliance(&onboard, "[triage]\nenabled = false\n");
    std::fs::write(
        a.dir.join("edge.d/40-telemetry.toml"),
        "[sync]\ntelemetry_interval_secs = 1\n",
    )
    .unwrap();
    let app = a.config().appliance_id;
    let case = a.soak(1, "Telemetry")[0].1.clone();
    a.ok(&["cases", "close", &case]);
    // The receiver is not running yet: the bundle waits, telemetry says so.
    let mut daemon = a.start_daemon();
    wait_for(30, "telemetry sealed while the bundle waits", || {
        (a.query_i64("SELECT count(*) FROM outbox WHERE kind = 'telemetry'") >= 2).then_some(())
    });
    let mut recv = r.spawn();
    wait_for(60, "everything receipted", || {
        (a.query_i64("SELECT count(*) FROM outbox WHERE kind = 'bundle' AND state = 'receipted'")
            == 1)
            .then_some(())
    });
    let metric = format!("hema3n_appliance_outbox_queued{{appliance=\"{app}\"}}");
    wait_for(30, "the appliance's telemetry on /metrics", || {
        r.http_get("/metrics").1.contains(&metric).then_some(())
    });
    // A telemetry envelope sealed before the receipt names the waiting bundle's age.
    let telemetry: Vec<String> = r
        .ok(&["bundles"])
        .lines()
        .filter(|l| l.ends_with("\ttelemetry"))
        .map(|l| l.split('\t').nth(1).unwrap().to_string())
        .collect();
    assert!(!telemetry.is_empty());
    let waited = telemetry.iter().any(|id| {
        let body = r.ok(&["bundles", &format!("{app}/{id}")]);
        body.contains("\"oldest_unreceipted_age_secs\"") && body.contains("\"outbox_queued\"")
    });
    assert!(waited, "no telemetry reported the waiting bundle");
    assert!(daemon.stop().success(), "{}", a.daemon_log());
    assert!(recv.stop().success(), "{}", r.log());
}
