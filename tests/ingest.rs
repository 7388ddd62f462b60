//! Contract A end to end: the real daemon, a real mosquitto, a real SQLCipher file.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::Appliance;
use common::broker::{Broker, wait_eq, wait_for};
use common::mqtt::{TestClient, hr_pack};
use hema3n_edge::model::{Actor, now_ms};

fn count(a: &Appliance, sql: &str) -> i64 {
    a.query_i64(sql)
}

#[test]
fn vitals_flow_from_simulated_devices_into_bound_cases_with_presence_alarms_and_attach() {
    let broker = Broker::start();
    let a = Appliance::with_broker(&broker.url(), "[ingest]\ndevice_silent_secs = 1\n");
    a.ok(&["devices", "add", "bound-1"]);
    a.ok(&["devices", "add", "loose-1"]);
    let case = a.soak(1, "Flow")[0].1.clone();
    a.ok(&["devices", "bind", "bound-1", &case]);
    let mut daemon = a.start_daemon();

    let mut watcher = TestClient::connect(broker.port, "watcher", None);
    watcher.subscribe("hema3n/v1/devices/+/rejects");
    let sim = |prefix: &str, scenario: &str, count: u64| {
        a.ok(&[
            "simulate",
            "--broker",
            &broker.url(),
            "--device-prefix",
            prefix,
            "--scenario",
            scenario,
            "--count",
            &count.to_string(),
            "--interval-ms",
            "0",
        ])
    };
    sim("bound-", "sepsis", 5);
    sim("loose-", "stable", 2);
    let q_case = format!("SELECT count(*) FROM observations WHERE case_id = '{case}'");
    wait_for(30, "55 readings on the case", || {
        (count(&a, &q_case) == 55).then_some(())
    });
    wait_for(30, "22 unbound readings", || {
        (count(
            &a,
            "SELECT count(*) FROM observations WHERE device_id = 'loose-1' AND case_id IS NULL",
        ) == 22)
            .then_some(())
    });

    // Decrypted vitals are the simulated ones, LOINC vocabulary only, device-timed.
    let mut db = a.open();
    let v = db.case_vitals(&Actor::cli(), &case).unwrap();
    assert_eq!(v.len(), 55);
    let by_code: BTreeMap<&str, usize> = v.iter().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(o.code.as_str()).or_default() += 1;
        m
    });
    assert_eq!(by_code.len(), 11, "{by_code:?}");
    assert!(
        v.iter()
            .filter(|o| o.code == "heart_rate")
            .all(|o| (60.0..=180.0).contains(&o.value))
    );
    assert!(
        v.iter()
            .all(|o| (o.recv_time_ms - o.device_time_ms).abs() < 60_000)
    );
    drop(db);

    // Presence from the retained status message.
    wait_for(10, "presence online", || {
        (count(
            &a,
            "SELECT count(*) FROM devices WHERE id = 'bound-1' AND presence = 'online'",
        ) == 1)
            .then_some(())
    });

    // The bound device fell silent: an alarm is raised on its case.
    wait_for(10, "device-silent alarm", || {
        (count(&a, &format!("SELECT count(*) FROM alarms WHERE kind = 'device_silent' AND device_id = 'bound-1' AND case_id = '{case}' AND cleared_at IS NULL")) == 1).then_some(())
    });

    // An unregistered device gets a specific reject on its own rejects topic.
    sim("ghost-", "stable", 1);
    let (topic, body) = watcher.next(10).expect("a reject for the ghost device");
    assert_eq!(topic, "hema3n/v1/devices/ghost-1/rejects");
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["code"], "UNKNOWN_DEVICE");

    // Readings kept while unbound are attached to the case later, re-encrypted under its key.
    let out = a.ok(&["devices", "bind", "loose-1", &case, "--attach-unbound"]);
    assert!(out.contains("attached 22 unbound readings"), "{out}");
    assert_eq!(
        a.open().case_vitals(&Actor::cli(), &case).unwrap().len(),
        77
    );
    // Vitals resumed → the alarm clears.
    sim("bound-", "sepsis", 1);
    wait_for(10, "alarm cleared", || {
        (count(
            &a,
            "SELECT count(*) FROM alarms WHERE device_id = 'bound-1' AND cleared_at IS NULL",
        ) == 0)
            .then_some(())
    });

    assert!(daemon.stop().success(), "{}", a.daemon_log());
    assert!(a.ok(&["audit", "verify"]).starts_with("OK"));
    let list = a.ok(&["devices", "list"]);
    assert!(list.contains("bound-1") && list.contains(&case), "{list}");
}

#[test]
fn malformed_input_corpus_gets_specific_rejects_and_valid_traffic_continues() {
    let broker = Broker::start();
    let a = Appliance::with_broker(&broker.url(), "");
    for d in ["bad-1", "good-1"] {
        a.ok(&["devices", "add", d]);
    }
    let mut daemon = a.start_daemon();
    let mut watcher = TestClient::connect(broker.port, "watcher", None);
    watcher.subscribe("hema3n/v1/devices/+/rejects");
    // The subscription must be in place before the corpus: publish a probe and wait for its reject.
    let mut probe = TestClient::connect(broker.port, "probe", None);
    loop {
        probe.publish("hema3n/v1/devices/bad-1/vitals", "[]");
        if let Some((_, b)) = watcher.next(2) {
            assert!(String::from_utf8_lossy(&b).contains("EMPTY_PACK"));
            break;
        }
    }
    let now = now_ms();
    let t = now as f64 / 1000.0;
    let many = format!(
        "[{}]",
        vec![format!(r#"{{"n":"pain","u":"/","v":1,"t":{t}}}"#); 300].join(",")
    );
    let huge = format!(
        r#"[{{"n":"pain","u":"/","v":1,"t":{t},"pad":"{}"}}]"#,
        "x".repeat(70_000)
    );
    let corpus: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad-1", b"{not json".to_vec(), "BAD_JSON"),
        (
            "bad-1",
            format!(r#"[{{"n":"heart_rate","u":"Hz","v":72,"t":{t}}}]"#).into_bytes(),
            "WRONG_UNIT",
        ),
        (
            "bad-1",
            format!(r#"[{{"n":"blood_alcohol","u":"%","v":0.1,"t":{t}}}]"#).into_bytes(),
            "UNKNOWN_NAME",
        ),
        (
            "bad-1",
            format!(r#"[{{"n":"spo2","u":"%","v":NaN,"t":{t}}}]"#).into_bytes(),
            "BAD_JSON",
        ),
        (
            "bad-1",
            format!(r#"[{{"n":"spo2","u":"%","v":140,"t":{t}}}]"#).into_bytes(),
            "OUT_OF_RANGE",
        ),
        (
            "bad-1",
            br#"[{"n":"spo2","u":"%","v":97}]"#.to_vec(),
            "MISSING_TIME",
        ),
        ("bad-1", many.into_bytes(), "TOO_MANY_RECORDS"),
        ("bad-1", huge.into_bytes(), "PAYLOAD_TOO_LARGE"),
        (
            "bad-1",
            vec![0xde, 0xad, 0xbe, 0xef, 0xff, 0x00, 0x13],
            "BAD_ENCODING",
        ),
        (
            "bad-1",
            format!(
                r#"[{{"n":"spo2","u":"%","v":97,"t":{}}}]"#,
                t + 3.0 * 86400.0
            )
            .into_bytes(),
            "TIME_IN_FUTURE",
        ),
        (
            "bad-1",
            format!(
                r#"[{{"n":"spo2","u":"%","v":97,"t":{}}}]"#,
                t - 30.0 * 86400.0
            )
            .into_bytes(),
            "TIME_TOO_OLD",
        ),
        (
            "bad-1",
            format!(r#"[{{"n":"spo2","u":"%","v":97,"t":{t},"crit_":1}}]"#).into_bytes(),
            "MUST_UNDERSTAND",
        ),
        (
            "bad-1",
            format!(r#"[{{"n":"avpu","vs":"Q","t":{t}}}]"#).into_bytes(),
            "BAD_VALUE",
        ),
        ("bad-1", br#"{"n":"spo2"}"#.to_vec(), "BAD_SENML"),
        ("nobody-1", hr_pack(now, 80).into_bytes(), "UNKNOWN_DEVICE"),
    ];
    let mut dev = TestClient::connect(broker.port, "corpus", None);
    let mut good = TestClient::connect(broker.port, "good-1", None);
    for (i, (device, payload, _)) in corpus.iter().enumerate() {
        dev.publish(
            &format!("hema3n/v1/devices/{device}/vitals"),
            payload.clone(),
        );
        good.publish(
            "hema3n/v1/devices/good-1/vitals",
            hr_pack(now + i as i64, 70 + i as i64),
        );
    }
    // Wrong topic shapes: an invalid device id is dead-lettered; a deeper topic is never delivered.
    dev.publish("hema3n/v1/devices/bad id!/vitals", hr_pack(now, 80));
    dev.publish("hema3n/v1/devices/bad-1/vitals/extra", hr_pack(now, 80));
    dev.flush();
    good.flush();

    let mut got: HashMap<String, usize> = HashMap::new();
    for _ in 0..corpus.len() {
        let (topic, body) = watcher
            .next(20)
            .unwrap_or_else(|| panic!("missing rejects; got {got:?}\n{}", a.daemon_log()));
        let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(topic.ends_with("/rejects"));
        assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()));
        *got.entry(j["code"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let mut want: HashMap<String, usize> = HashMap::new();
    for (_, _, code) in &corpus {
        *want.entry(code.to_string()).or_default() += 1;
    }
    assert_eq!(got, want);
    wait_for(20, "BAD_DEVICE_ID dead letter", || {
        (count(
            &a,
            "SELECT count(*) FROM dead_letters WHERE code = 'BAD_DEVICE_ID'",
        ) == 1)
            .then_some(())
    });
    // Every valid reading of the good device was stored, exactly once.
    wait_for(20, "good readings", || {
        (count(
            &a,
            "SELECT count(*) FROM observations WHERE device_id = 'good-1'",
        ) == corpus.len() as i64)
            .then_some(())
    });
    let dead = a.open().dead_letter_counts().unwrap();
    let total: u64 = dead.iter().map(|(_, n)| n).sum();
    assert_eq!(total as usize, corpus.len() + 2, "{dead:?}"); // + probe + bad id
    assert!(
        daemon.running(),
        "daemon must survive the corpus:\n{}",
        a.daemon_log()
    );
    // Rejects are audited, and rejected payloads are kept encrypted (never in plaintext).
    assert!(
        count(
            &a,
            "SELECT count(*) FROM audit_log WHERE action = 'vitals.reject'"
        ) >= corpus.len() as i64
    );
    assert!(!common::contains(
        &std::fs::read(a.db_path()).unwrap(),
        b"blood_alcohol"
    ));
    assert!(daemon.stop().success());
    assert!(a.ok(&["audit", "verify"]).starts_with("OK"));
}

#[test]
fn a_flooding_device_is_rate_limited_without_starving_others() {
    let broker = Broker::start();
    let a = Appliance::with_broker(
        &broker.url(),
        "[ingest]\ndevice_rate_per_sec = 50.0\ndevice_burst = 100.0\n",
    );
    for d in ["flood-1", "calm-1"] {
        a.ok(&["devices", "add", d]);
    }
    let mut daemon = a.start_daemon();
    let mut flood = TestClient::connect(broker.port, "flood-1", None);
    let mut calm = TestClient::connect(broker.port, "calm-1", None);
    let now = now_ms();
    let started = std::time::Instant::now();
    for i in 0..2000 {
        flood.publish("hema3n/v1/devices/flood-1/vitals", hr_pack(now + i, 80));
        if i % 100 == 0 {
            calm.publish("hema3n/v1/devices/calm-1/vitals", hr_pack(now + i, 70));
        }
    }
    flood.flush();
    calm.flush();
    wait_eq(30, "all flood messages handled", 2000, || {
        count(
            &a,
            "SELECT count(*) FROM observations WHERE device_id = 'flood-1'",
        ) + count(
            &a,
            "SELECT count(*) FROM dead_letters WHERE device_id = 'flood-1'",
        )
    });
    let elapsed = started.elapsed().as_secs_f64();
    if std::env::var_os("HEMA3N_TEST_KEEP").is_some() {
        eprintln!("{}", a.daemon_log());
    }
    assert_eq!(
        count(
            &a,
            "SELECT count(*) FROM observations WHERE device_id = 'calm-1'"
        ),
        20,
        "calm device fully stored"
    );
    let stored = count(
        &a,
        "SELECT count(*) FROM observations WHERE device_id = 'flood-1'",
    ) as f64;
    let limited = count(
        &a,
        "SELECT count(*) FROM dead_letters WHERE device_id = 'flood-1' AND code = 'RATE_LIMITED'",
    );
    assert!(
        stored >= 100.0 && stored <= 100.0 + 50.0 * elapsed + 5.0,
        "stored {stored} in {elapsed:.1}s"
    );
    assert!(
        limited >= 2000 - (100 + (50.0 * elapsed) as i64 + 5),
        "limited {limited}"
    );
    assert_eq!(
        count(
            &a,
            "SELECT count(*) FROM dead_letters WHERE code = 'RATE_LIMITED' AND payload IS NOT NULL"
        ),
        0,
        "flood payloads are not kept"
    );
    daemon.kill9();
}

#[test]
fn devices_add_maintains_mosquitto_credentials_and_the_acl_confines_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let passwd = tmp.path().join("passwd");
    let acl = tmp.path().join("acl");
    std::fs::write(
        &acl,
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/systemd/mosquitto/hema3n.acl"
        ))
        .unwrap(),
    )
    .unwrap();
    // The daemon's own broker account, as provisioning creates it.
    let daemon_pw = "daemon-secret-for-test";
    std::fs::write(
        &passwd,
        format!(
            "hema3n-edge:{}\n",
            hema3n_edge::crypto::mosquitto_password_hash(daemon_pw).unwrap()
        ),
    )
    .unwrap();
    let mut broker = Broker::start_with(&format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\n",
        passwd.display(),
        acl.display()
    ));
    let a = Appliance::with_broker(
        &broker.url(),
        &format!(
            "username = \"hema3n-edge\"\npassword_file = \"{}\"\n",
            passwd.display()
        ),
    );
    std::fs::write(a.key_dir().join("mqtt.password"), daemon_pw).unwrap();
    std::fs::set_permissions(
        a.key_dir().join("mqtt.password"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let pw = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("broker password: "))
            .unwrap()
            .to_string()
    };
    let pw_a = pw(&a.ok(&["devices", "add", "dev-a"]));
    let _pw_b = pw(&a.ok(&["devices", "add", "dev-b"]));
    broker.restart(); // mosquitto re-reads the password file (systemctl reload in production)
    let mut daemon = a.start_daemon();
    let mut dev_a = TestClient::connect(broker.port, "dev-a", Some(("dev-a", &pw_a)));
    let now = now_ms();
    dev_a.publish("hema3n/v1/devices/dev-a/vitals", hr_pack(now, 81));
    dev_a.publish("hema3n/v1/devices/dev-b/vitals", hr_pack(now + 1, 82)); // denied by the ACL
    dev_a.publish("hema3n/v1/devices/dev-a/vitals", hr_pack(now + 2, 83));
    dev_a.flush();
    wait_for(20, "dev-a readings", || {
        (count(
            &a,
            "SELECT count(*) FROM observations WHERE device_id = 'dev-a'",
        ) == 2)
            .then_some(())
    });
    assert_eq!(
        count(
            &a,
            "SELECT count(*) FROM observations WHERE device_id = 'dev-b'"
        ),
        0,
        "a device cannot publish as another"
    );
    // A wrong password is refused by the broker: nothing arrives.
    let mut intruder = TestClient::connect(broker.port, "dev-b", Some(("dev-b", "wrong")));
    intruder.publish("hema3n/v1/devices/dev-b/vitals", hr_pack(now + 3, 84));
    // Removing a device drops its credential line.
    a.ok(&["devices", "remove", "dev-b"]);
    let text = std::fs::read_to_string(&passwd).unwrap();
    assert!(
        text.contains("hema3n-edge:$7$101$")
            && text.contains("dev-a:$7$101$")
            && !text.contains("dev-b:"),
        "{text}"
    );
    assert_eq!(
        count(
            &a,
            "SELECT count(*) FROM observations WHERE device_id = 'dev-b'"
        ),
        0
    );
    daemon.kill9();
}
