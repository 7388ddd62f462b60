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
