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
    let (v, _) = db.case_vitals(&Actor::cli(), &case).unwrap();
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
        a.open().case_vitals(&Actor::cli(), &case).unwrap().0.len(),
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
fn a_flooding_device_is_shaped_not_refused_and_does_not_starve_others() {
    let broker = Broker::start();
    let a = Appliance::with_broker(
        &broker.url(),
        "[ingest]\ndevice_rate_per_sec = 500.0\ndevice_burst = 100.0\n",
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
    // Every message is stored, none refused: the excess waited for the device's bucket.
    wait_eq(60, "every flood message stored", 2000, || {
        count(
            &a,
            "SELECT count(*) FROM observations WHERE device_id = 'flood-1'",
        )
    });
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(
        count(
            &a,
            "SELECT count(*) FROM observations WHERE device_id = 'calm-1'"
        ),
        20,
        "calm device fully stored"
    );
    assert_eq!(count(&a, "SELECT count(*) FROM dead_letters"), 0);
    // Shaped, not merely accepted: 1,900 messages beyond the burst take 3.8 s at 500/s.
    assert!(elapsed >= 3.5, "stored 2000 in {elapsed:.1}s: not shaped");
    daemon.kill9();
}

#[test]
fn a_backlog_published_while_the_daemon_is_down_is_stored_exactly_once() {
    // Review #9: the broker replays the backlog at commit speed after a restart; the default
    // per-device rate (200/s, burst 1000) used to refuse two thirds of it as RATE_LIMITED.
    let broker = Broker::start();
    let a = Appliance::with_broker(&broker.url(), "");
    a.ok(&["devices", "add", "mon-1"]);
    let mut daemon = a.start_daemon(); // creates the daemon's persistent session
    assert!(daemon.stop().success());
    let mut dev = TestClient::connect(broker.port, "mon-1", None);
    let now = now_ms() - 3_600_000;
    for i in 0..3000 {
        dev.publish(
            "hema3n/v1/devices/mon-1/vitals",
            hr_pack(now + i * 1000, 60 + i % 90),
        );
    }
    dev.flush();
    let mut daemon = a.start_daemon();
    wait_eq(120, "the whole backlog stored", 3000, || {
        count(
            &a,
            "SELECT count(*) FROM observations WHERE device_id = 'mon-1'",
        )
    });
    assert_eq!(count(&a, "SELECT count(*) FROM dead_letters"), 0);
    // Exactly once: a restart (redelivery of anything unacked) adds nothing.
    assert!(daemon.stop().success());
    let mut daemon = a.start_daemon();
    assert_eq!(
        count(
            &a,
            "SELECT count(DISTINCT device_time) FROM observations WHERE device_id = 'mon-1'"
        ),
        3000
    );
    assert!(daemon.running());
    daemon.kill9();
}

#[test]
fn poison_packs_and_an_oversized_queued_message_neither_restart_nor_wedge_the_daemon() {
    // The broker here accepts any size, as a misconfigured one would: the daemon must still
    // read the oversized message queued for its session and dead-letter it.
    let broker = Broker::start_with("allow_anonymous true\nmessage_size_limit 0\n");
    let a = Appliance::with_broker(&broker.url(), "");
    for d in ["bad-1", "good-1", "mon-x"] {
        a.ok(&["devices", "add", d]);
    }
    // A device registered before territories were checked, in one without a key (review #10).
    a.open()
        .raw_connection_for_tests()
        .execute(
            "UPDATE devices SET territory = 'nroth' WHERE id = 'mon-x'",
            [],
        )
        .unwrap();
    let mut daemon = a.start_daemon();
    assert!(daemon.stop().success());
    let now = now_ms();
    let t = now as f64 / 1000.0;
    let hostile: Vec<(String, &str)> = vec![
        (
            r#"[{"bt":-1e20,"n":"heart_rate","u":"beat/min","v":70}]"#.into(),
            "TIME_TOO_OLD",
        ),
        (
            r#"[{"bt":-1e16,"n":"heart_rate","u":"beat/min","v":70}]"#.into(),
            "TIME_TOO_OLD",
        ),
        (
            r#"[{"n":"heart_rate","u":"beat/min","v":70,"t":-1e20}]"#.into(),
            "TIME_TOO_OLD",
        ),
        (
            r#"[{"bt":-1e308,"n":"heart_rate","u":"beat/min","v":70,"t":-1e308}]"#.into(),
            "TIME_TOO_OLD",
        ),
        (
            r#"[{"bt":1e308,"n":"heart_rate","u":"beat/min","v":70,"t":1e308}]"#.into(),
            "TIME_IN_FUTURE",
        ),
        (
            format!(r#"[{{"n":"heart_rate","u":"beat/min","v":70,"v":71,"t":{t}}}]"#),
            "BAD_SENML",
        ),
        (
            format!(r#"[{{"n":"heart_rate","u":"beat/min","v":70,"vs":"A","t":{t}}}]"#),
            "BAD_SENML",
        ),
        (
            format!(r#"[{{"n":"spo2","n":"heart_rate","u":"%","v":97,"t":{t}}}]"#),
            "BAD_SENML",
        ),
        (
            format!(
                r#"[{{"bn":"{}","n":"heart_rate","u":"beat/min","v":70,"t":{t}}}]"#,
                "x".repeat(50_000)
            ),
            "UNKNOWN_NAME",
        ),
        (
            format!(r#"[{{"n":"heart_rate","u":"beat/min","v":-70,"t":{t}}}]"#),
            "OUT_OF_RANGE",
        ),
        (
            format!(r#"[{{"n":"heart_rate","u":"beat/min","v":1e300,"t":{t}}}]"#),
            "OUT_OF_RANGE",
        ),
        (
            format!(r#"[{{"n":"heart_rate","u":"beat/min","v":true,"t":{t}}}]"#),
            "BAD_VALUE",
        ),
        (
            r#"[{"n":"heart_rate","u":"beat/min","v":70,"t":"now"}]"#.to_string(),
            "BAD_SENML",
        ),
        (
            format!(r#"[{{"n":"heart_rate","u":"beat/min","v":70,"bt":{t},"bver":99}}]"#),
            "BAD_SENML",
        ),
        (
            format!(r#"[{{"n":"heart_rate","u":"beat/min","bv":1,"v":70,"t":{t}}}]"#),
            "UNSUPPORTED_VALUE",
        ),
        (
            format!(r#"[{{"n":"heart_rate","u":"beat/min","v":70,"t":{t}}},7]"#),
            "BAD_SENML",
        ),
        (
            format!(r#"[[{{"n":"heart_rate","u":"beat/min","v":70,"t":{t}}}]]"#),
            "BAD_SENML",
        ),
        (
            format!("{}1{}", "[".repeat(200), "]".repeat(200)),
            "BAD_JSON",
        ),
        ("\u{feff}[]".into(), "BAD_JSON"),
        ("null".into(), "BAD_SENML"),
        (
            r#"[{"n":"heart_rate","u":"beat/min","v":70,"bt":1e-320,"t":0}]"#.into(),
            "MISSING_TIME",
        ),
        (
            format!(r#"[{{"n":"avpu","vs":"{}","t":{t}}}]"#, "A".repeat(10_000)),
            "BAD_VALUE",
        ),
        (
            format!(r#"[{{"n":"temp","u":"Cel","v":37,"t":{t},"t_":1}}]"#),
            "MUST_UNDERSTAND",
        ),
        (
            format!(r#"[{{"n":"temp","u":"Cel\u0000","v":37,"t":{t}}}]"#),
            "WRONG_UNIT",
        ),
    ];
    let mut bad = TestClient::connect(broker.port, "bad-1", None);
    let mut good = TestClient::connect(broker.port, "good-1", None);
    let mut keyless = TestClient::connect(broker.port, "mon-x", None);
    // 2 MiB: above the daemon's 1 MiB packet limit and its 64 KiB payload limit.
    bad.publish("hema3n/v1/devices/bad-1/vitals", vec![b'['; 2 << 20]);
    for (i, (p, _)) in hostile.iter().enumerate() {
        bad.publish("hema3n/v1/devices/bad-1/vitals", p.clone());
        good.publish(
            "hema3n/v1/devices/good-1/vitals",
            hr_pack(now + i as i64, 70),
        );
        keyless.publish(
            "hema3n/v1/devices/mon-x/vitals",
            hr_pack(now + i as i64, 70),
        );
    }
    bad.flush();
    good.flush();
    keyless.flush();
    let mut daemon = a.start_daemon();
    let n = hostile.len() as i64;
    wait_eq(60, "every good reading stored", n, || {
        count(
            &a,
            "SELECT count(*) FROM observations WHERE device_id = 'good-1'",
        )
    });
    wait_eq(60, "every hostile pack dead-lettered", n + 1, || {
        count(
            &a,
            "SELECT count(*) FROM dead_letters WHERE device_id = 'bad-1'",
        )
    });
    let db = a.open();
    let conn = db.raw_connection_for_tests();
    let mut codes: Vec<String> = conn
        .prepare("SELECT code FROM dead_letters WHERE device_id = 'bad-1' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(codes.remove(0), "PAYLOAD_TOO_LARGE");
    let want: Vec<&str> = hostile.iter().map(|(_, c)| *c).collect();
    assert_eq!(codes, want);
    // The key-less territory's packs are refused one by one, kept sealed, never stopping the
    // batch for the others.
    wait_eq(30, "mon-x packs dead-lettered", n, || {
        count(
            &a,
            "SELECT count(*) FROM dead_letters WHERE device_id = 'mon-x' AND code = 'STORE_REFUSED' AND payload IS NOT NULL",
        )
    });
    drop(db);
    assert!(daemon.running(), "{}", a.daemon_log());
    assert_eq!(
        a.daemon_log()
            .matches("subscribed to device topics")
            .count(),
        2
    );
    assert!(daemon.stop().success());
    assert!(a.ok(&["audit", "verify"]).starts_with("OK"));
}

#[test]
fn a_qos0_flood_is_bounded_and_qos1_vitals_still_arrive() {
    // Review #14a: QoS 0 bypasses the broker's window; the daemon queued it without bound.
    let broker = Broker::start();
    let a = Appliance::with_broker(&broker.url(), "[ingest]\nqos0_backlog = 5\n");
    for d in ["flood-0", "calm-1"] {
        a.ok(&["devices", "add", d]);
    }
    let mut daemon = a.start_daemon();
    let mut flood = TestClient::connect(broker.port, "flood-0", None);
    let mut calm = TestClient::connect(broker.port, "calm-1", None);
    let now = now_ms();
    for i in 0..5000 {
        flood.publish_qos0("hema3n/v1/devices/flood-0/vitals", hr_pack(now + i, 80));
        if i % 250 == 0 {
            calm.publish("hema3n/v1/devices/calm-1/vitals", hr_pack(now + i, 70));
        }
    }
    calm.flush();
    wait_eq(30, "every QoS 1 reading stored", 20, || {
        count(
            &a,
            "SELECT count(*) FROM observations WHERE device_id = 'calm-1'",
        )
    });
    wait_for(30, "the QoS 0 flood counted and logged", || {
        a.daemon_log().contains("QoS 0 flood").then_some(())
    });
    let stored = count(
        &a,
        "SELECT count(*) FROM observations WHERE device_id = 'flood-0'",
    );
    assert!(stored < 5000, "nothing was bounded: {stored} stored");
    assert!(daemon.running());
    daemon.kill9();
}

#[test]
fn devices_add_refuses_a_territory_without_a_key_and_the_daemons_own_account() {
    let a = Appliance::init();
    let out = a.run(&["devices", "add", "mon-9", "--territory", "nroth"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no key for territory `nroth`"), "{err}");
    let out = a.run(&["devices", "add", "hema3n-edge"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("daemon's own broker account"));
    assert_eq!(a.query_i64("SELECT count(*) FROM devices"), 0);
}

#[test]
fn every_broker_configuration_we_ship_caps_messages_below_the_daemons_packet_limit() {
    let limit = hema3n_edge::config::Config::default().mqtt.max_packet_bytes;
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "systemd/mosquitto/hema3n.conf",
        "scripts/demo.sh",
        "tests/common/broker.rs",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let caps: Vec<usize> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("message_size_limit "))
            .filter_map(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect();
        assert!(!caps.is_empty(), "{file} sets no message_size_limit");
        // The demo's cloud broker carries bundles to the receiver (its own, larger limit).
        let edge = caps[0];
        assert!(edge > 0 && edge < limit, "{file}: {edge} vs {limit}");
    }
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
