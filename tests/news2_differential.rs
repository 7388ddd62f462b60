//! NEWS2 differential test: our scorer against an independent implementation (`vitalscore`
//! from PyPI, installed by scripts/test.sh into .tools/python) on 10^5 random vital sets,
//! comparing the total and every sub-score.

use std::io::Write;
use std::path::Path;

use hema3n_edge::ingest::simulate::Rng;
use hema3n_edge::triage::news2::{News2Input, score};

#[test]
fn news2_agrees_with_an_independent_scorer_on_100k_random_vitals() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pylib = root.join(".tools/python");
    assert!(
        pylib.join("vitalscore").exists(),
        "the reference scorer is not installed: run ./scripts/test.sh (pip install --target .tools/python vitalscore)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (inp, out) = (tmp.path().join("in.csv"), tmp.path().join("out.csv"));
    let mut rng = Rng::new(2017);
    let n = 100_000;
    let mut cases = Vec::with_capacity(n);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&inp).unwrap());
    for _ in 0..n {
        let int = |rng: &mut Rng, lo: u64, hi: u64| (lo + rng.next_u64() % (hi - lo + 1)) as f64;
        let i = News2Input {
            resp_rate: Some(int(&mut rng, 0, 60)),
            spo2: Some(int(&mut rng, 70, 100)),
            on_oxygen: rng.unit() < 0.4,
            spo2_scale2: rng.unit() < 0.3,
            sbp: Some(int(&mut rng, 40, 260)),
            heart_rate: Some(int(&mut rng, 20, 220)),
            acvpu: Some((rng.next_u64() % 5) as u8),
            temp: Some(int(&mut rng, 320, 425) / 10.0),
        };
        writeln!(
            f,
            "{},{},{},{},{},{},{},{:.1}",
            i.resp_rate.unwrap(),
            i.spo2.unwrap(),
            i.on_oxygen as u8,
            i.spo2_scale2 as u8,
            i.sbp.unwrap(),
            i.heart_rate.unwrap(),
            i.acvpu.unwrap(),
            i.temp.unwrap()
        )
        .unwrap();
        cases.push(i);
    }
    drop(f);
    // Supplemental oxygen and SpO2 scale 2 (alone and together) are covered, not only air.
    let both = cases
        .iter()
        .filter(|c| c.on_oxygen && c.spo2_scale2)
        .count();
    let o2 = cases
        .iter()
        .filter(|c| c.on_oxygen && !c.spo2_scale2)
        .count();
    let s2 = cases
        .iter()
        .filter(|c| !c.on_oxygen && c.spo2_scale2)
        .count();
    assert!(
        both > 10_000 && o2 > 20_000 && s2 > 15_000,
        "{both} {o2} {s2}"
    );
    let st = std::process::Command::new("python3")
        .arg(root.join("tests/news2_reference.py"))
        .arg(&inp)
        .arg(&out)
        .env("PYTHONPATH", &pylib)
        .status()
        .unwrap();
    assert!(st.success(), "reference scorer failed");
    let text = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), n);
    let mut disagreements = Vec::new();
    for (i, (case, row)) in cases.iter().zip(rows).enumerate() {
        let theirs: Vec<u8> = row.split(',').map(|x| x.parse().unwrap()).collect();
        let ours = score(case);
        let mut mine = vec![ours.total];
        mine.extend(ours.subscores.iter().map(|s| s.score));
        if mine != theirs {
            disagreements.push(format!(
                "case {i}: {case:?}: ours {mine:?}, reference {theirs:?}"
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements, first: {}",
        disagreements.len(),
        disagreements[0]
    );
}
