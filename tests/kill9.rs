//! Crash safety: a writer is SIGKILLed in the middle of a stream, over and over. Everything it
//! reported committed must survive; integrity check and audit verify must pass after each
//! restart. 50 rounds by default; `HEMA3N_KILL9_ROUNDS` raises it for soak runs.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

use common::{Appliance, Rng, parse_committed};
use hema3n_edge::model::Actor;

fn rounds() -> usize {
    std::env::var("HEMA3N_KILL9_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

#[test]
fn kill_9_loop_loses_no_committed_record() {
    let a = Appliance::init();
    let seed = std::env::var("HEMA3N_KILL9_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9e3779b97f4a7c15u64 ^ std::process::id() as u64);
    eprintln!("kill -9 loop seed {seed} (set HEMA3N_KILL9_SEED to replay)");
    let mut rng = Rng(seed | 1);
    let mut committed: Vec<(String, String)> = Vec::new();
    for round in 0..rounds() {
        let wait_for = 1 + (rng.next() % 12) as usize;
        let mut w = a
            .cmd(&["debug", "soak", "--last-name", "Killed"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(w.stdout.take().unwrap());
        let mut text = String::new();
        for _ in 0..wait_for {
            let mut l = String::new();
            if out.read_line(&mut l).unwrap() == 0 {
                panic!("round {round}: writer exited early: {text}");
            }
            text.push_str(&l);
        }
        w.kill().unwrap(); // SIGKILL, mid-transaction of the next record
        w.wait().unwrap();
        out.read_to_string(&mut text).unwrap(); // lines printed after COMMIT but before the kill
        let got = parse_committed(&text);
        assert!(got.len() >= wait_for, "round {round}");
        committed.extend(got);

        let mut db = a.open();
        assert_eq!(
            db.integrity_check(true).unwrap(),
            Vec::<String>::new(),
            "round {round}"
        );
        let rep = db.verify_audit().unwrap();
        assert!(rep.ok(), "round {round}: {:?}", rep.findings);
        if round % 10 == 9 || round + 1 == rounds() {
            for (p, c) in &committed {
                assert_eq!(
                    db.get_patient(&Actor::cli(), p)
                        .unwrap()
                        .patient
                        .last_name
                        .as_deref(),
                    Some("Killed"),
                    "round {round}"
                );
                assert!(db.get_case(&Actor::cli(), c).is_ok(), "round {round}");
            }
        }
    }
    let full = a.open().integrity_check(false).unwrap();
    assert!(full.is_empty(), "{full:?}");
    let out = a.ok(&["audit", "verify"]);
    assert!(out.starts_with("OK"), "{out}");
    eprintln!(
        "{} records committed across {} kills, all present",
        committed.len(),
        rounds()
    );
}

/// Audited reads answer only once their audit entry is durable (#22): clients read a case
/// (view, vitals, list) in parallel through the real daemon; it is SIGKILLed as soon as enough
/// answers arrived, with reads in flight. Every read answered 200 must have its entry after the
/// restart, the log must verify, three times over.
#[test]
fn every_answered_read_has_its_audit_entry_after_kill_9() {
    use common::broker::Broker;
    use common::https::{connect, login, try_request};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};

    const ACTIONS: [&str; 3] = ["case.read", "observation.read", "case.list"];
    let broker = Broker::start();
    let a = Appliance::with_broker(&broker.url(), "[triage]\nenabled = false\n");
    let mut c = a.cmd(&[
        "users",
        "add",
        "reader1",
        "--name",
        "R",
        "--role",
        "paramedic",
    ]);
    c.stdin(Stdio::piped()).stdout(Stdio::null());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "pin-4829").unwrap();
    }
    assert!(child.wait().unwrap().success());
    let case = a.soak(1, "Reader")[0].1.clone();
    let paths = [
        format!("/api/v1/cases/{case}"),
        format!("/api/v1/cases/{case}/vitals"),
        "/api/v1/cases".to_string(),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rng = Rng(0x5eed ^ std::process::id() as u64 | 1);
    let answered: Arc<Mutex<[usize; 3]>> = Arc::default();
    for round in 0..3 {
        let mut d = a.start_daemon();
        let port = a.api_port();
        let stop_after = 150 + (rng.next() % 300) as usize;
        let total = Arc::new(AtomicUsize::new(0));
        rt.block_on(async {
            let cert = a.key_dir().join("api-cert.pem");
            let (_, tls, token) = login(port, &cert, "reader1", "pin-4829").await;
            let mut clients = Vec::new();
            for k in 0..16 {
                let (mut s, token) = (connect(port, &tls).await, token.clone());
                let (paths, answered, total) = (paths.clone(), answered.clone(), total.clone());
                clients.push(tokio::spawn(async move {
                    for i in k.. {
                        let w = i % 3;
                        match try_request(&mut s, "GET", &paths[w], Some(&token), None).await {
                            Ok((200, _)) => {
                                answered.lock().unwrap()[w] += 1;
                                total.fetch_add(1, SeqCst);
                            }
                            Ok((st, b)) => panic!("{}: {st} {b:?}", paths[w]),
                            Err(_) => break, // the daemon is gone
                        }
                    }
                }));
            }
            while total.load(SeqCst) < stop_after {
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            d.kill9();
            for c in clients {
                c.await.unwrap();
            }
        });
        let got = answered.lock().unwrap().to_owned();
        eprintln!("round {round}: killed after {stop_after}+ answers; answered so far {got:?}");
        for (w, action) in ACTIONS.iter().enumerate() {
            let stored = a.query_i64(&format!(
                "SELECT count(*) FROM audit_log WHERE actor = 'reader1' AND action = '{action}' AND outcome = 'success'"
            )) as usize;
            assert!(
                stored >= got[w],
                "round {round}: {} {action} answered, {stored} entries",
                got[w]
            );
        }
        let rep = a.open().verify_audit().unwrap();
        assert!(rep.ok(), "round {round}: {:?}", rep.findings);
    }
    assert!(answered.lock().unwrap().iter().all(|&n| n > 0));
}
