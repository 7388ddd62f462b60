//! `hema3n-edge simulate`: field devices publishing realistic SenML vitals that follow named
//! clinical scenarios, with injectable faults. Used by `demo.sh`, tests and benchmarks.
//!
//! Each device opens its own MQTT connection (client id = device id), sets a retained last will
//! `offline` on its status topic and publishes a retained `online`, then publishes QoS 1 packs.
//! A scenario moves the patient from its start to its end state over `scenario_secs`; values
//! get physiological noise. Faults replace a message with probability `fault_rate`.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};

use super::topics;
use crate::model::now_ms;

/// Named clinical courses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Stable,
    Sepsis,
    HaemorrhagicShock,
    Hypoglycaemia,
    HeadInjury,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Stable,
        Scenario::Sepsis,
        Scenario::HaemorrhagicShock,
        Scenario::Hypoglycaemia,
        Scenario::HeadInjury,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "stable" => Scenario::Stable,
            "sepsis" => Scenario::Sepsis,
            "shock" | "haemorrhagic-shock" => Scenario::HaemorrhagicShock,
            "hypoglycaemia" | "hypoglycemia" => Scenario::Hypoglycaemia,
            "head-injury" => Scenario::HeadInjury,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Stable => "stable",
            Scenario::Sepsis => "sepsis",
            Scenario::HaemorrhagicShock => "shock",
            Scenario::Hypoglycaemia => "hypoglycaemia",
            Scenario::HeadInjury => "head-injury",
        }
    }

    /// `(name, unit, start, end, noise sd)` per vital; AVPU is derived from GCS.
    fn course(self) -> [(&'static str, &'static str, f64, f64, f64); 11] {
        let base = |hr: (f64, f64),
                    rr: (f64, f64),
                    spo2: (f64, f64),
                    sbp: (f64, f64),
                    dbp: (f64, f64),
                    t: (f64, f64),
                    co2: (f64, f64),
                    glu: (f64, f64),
                    gcs: (f64, f64),
                    pain: (f64, f64)| {
            [
                ("heart_rate", "beat/min", hr.0, hr.1, 3.0),
                ("resp_rate", "1/min", rr.0, rr.1, 1.0),
                ("spo2", "%", spo2.0, spo2.1, 0.7),
                ("sbp", "mmHg", sbp.0, sbp.1, 4.0),
                ("dbp", "mmHg", dbp.0, dbp.1, 3.0),
                ("temp", "Cel", t.0, t.1, 0.05),
                ("etco2", "mmHg", co2.0, co2.1, 1.0),
                ("glucose", "mg/dL", glu.0, glu.1, 3.0),
                ("gcs_total", "/", gcs.0, gcs.1, 0.0),
                ("pain", "/", pain.0, pain.1, 0.0),
                ("avpu", "", 0.0, 0.0, 0.0),
            ]
        };
        match self {
            Scenario::Stable => base(
                (78., 80.),
                (14., 14.),
                (98., 98.),
                (124., 122.),
                (78., 77.),
                (36.9, 36.9),
                (37., 37.),
                (105., 104.),
                (15., 15.),
                (2., 2.),
            ),
            Scenario::Sepsis => base(
                (98., 138.),
                (21., 31.),
                (95., 87.),
                (112., 80.),
                (68., 44.),
                (38.4, 39.7),
                (32., 24.),
                (165., 190.),
                (15., 13.),
                (4., 5.),
            ),
            Scenario::HaemorrhagicShock => base(
                (108., 152.),
                (22., 34.),
                (96., 89.),
                (104., 66.),
                (66., 36.),
                (36.4, 35.4),
                (30., 19.),
                (140., 150.),
                (15., 11.),
                (8., 9.),
            ),
            Scenario::Hypoglycaemia => base(
                (96., 116.),
                (16., 18.),
                (97., 96.),
                (132., 138.),
                (82., 84.),
                (36.3, 36.1),
                (36., 35.),
                (58., 31.),
                (14., 9.),
                (0., 0.),
            ),
            Scenario::HeadInjury => base(
                (74., 51.),
                (16., 9.),
                (97., 93.),
                (138., 178.),
                (84., 92.),
                (36.8, 36.9),
                (38., 45.),
                (120., 125.),
                (14., 7.),
                (6., 6.),
            ),
        }
    }
}

/// Faults the simulator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    BadUnits,
    Garbage,
    Duplicates,
    ClockSkew,
}

impl Fault {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "bad-units" => Fault::BadUnits,
            "garbage" => Fault::Garbage,
            "duplicates" => Fault::Duplicates,
            "clock-skew" => Fault::ClockSkew,
            _ => return None,
        })
    }
}

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub host: String,
    pub port: u16,
    pub devices: usize,
    pub device_prefix: String,
    /// `None` = each device gets the next scenario in [`Scenario::ALL`].
    pub scenario: Option<Scenario>,
    /// Time between packs of one device; 0 = as fast as the broker accepts.
    pub interval: Duration,
    /// Packs per device; 0 = until `duration` (or forever).
    pub count: u64,
    pub duration: Option<Duration>,
    /// How long a scenario takes from start to end state.
    pub scenario_secs: f64,
    /// Readings per pack (1..=11); with fewer than 11 the vitals rotate.
    pub readings_per_pack: usize,
    pub faults: Vec<Fault>,
    pub fault_rate: f64,
    pub seed: u64,
    pub credentials: Option<(String, String)>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            host: "127.0.0.1".into(),
            port: 1883,
            devices: 1,
            device_prefix: "sim-".into(),
            scenario: None,
            interval: Duration::from_secs(1),
            count: 0,
            duration: None,
            scenario_secs: 600.0,
            readings_per_pack: 11,
            faults: Vec::new(),
            fault_rate: 0.0,
            seed: 1,
            credentials: None,
        }
    }
}

/// What a simulator run published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    pub packs: u64,
    pub readings: u64,
    pub faulty: u64,
    pub duplicates: u64,
}

/// xorshift64* with Box-Muller; deterministic per seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Builds one SenML pack for `scenario` at progress `p` ∈ [0, 1] and time `t_ms`.
/// `rotate` selects which vitals go into a pack smaller than the full set.
pub fn pack(
    device: &str,
    scenario: Scenario,
    p: f64,
    t_ms: i64,
    n: usize,
    rotate: usize,
    rng: &mut Rng,
) -> (String, usize) {
    let course = scenario.course();
    let p = p.clamp(0.0, 1.0);
    let mut gcs = 15.0;
    let mut recs = Vec::new();
    for (name, unit, a, b, sd) in course {
        if name == "avpu" {
            continue;
        }
        let mut v = a + (b - a) * p + sd * rng.normal();
        v = match name {
            "spo2" => v.min(100.0),
            "gcs_total" => {
                gcs = v.round().clamp(3.0, 15.0);
                gcs
            }
            "pain" => v.round().clamp(0.0, 10.0),
            "temp" => (v * 10.0).round() / 10.0,
            _ => v.round().max(0.0),
        };
        recs.push(format!(r#"{{"n":"{name}","u":"{unit}","v":{v}}}"#));
    }
    let avpu = match gcs as i64 {
        15 => "A",
        13..=14 => "V",
        9..=12 => "P",
        _ => "U",
    };
    recs.push(format!(r#"{{"n":"avpu","vs":"{avpu}"}}"#));
    let n = n.clamp(1, recs.len());
    let start = (rotate * n) % recs.len();
    let chosen: Vec<&String> = (0..n).map(|i| &recs[(start + i) % recs.len()]).collect();
    let secs = t_ms as f64 / 1000.0;
    let first = chosen[0].trim_start_matches('{');
    let mut body = format!(r#"[{{"bn":"{device}:","bt":{secs:.3},{first}"#);
    for r in &chosen[1..] {
        body.push(',');
        body.push_str(r);
    }
    body.push(']');
    (body, n)
}

fn faulty(body: &str, fault: Fault, rng: &mut Rng) -> Vec<u8> {
    match fault {
        Fault::BadUnits => body
            .replacen(r#""u":"beat/min""#, r#""u":"Hz""#, 1)
            .replacen(r#""u":"%""#, r#""u":"ratio""#, 1)
            .into_bytes(),
        Fault::Garbage => (0..(16 + rng.next_u64() % 200))
            .map(|_| rng.next_u64() as u8)
            .collect(),
        Fault::ClockSkew => {
            let shifted = body.split_once(r#""bt":"#).map(|(a, rest)| {
                let (num, tail) = rest.split_once(',').unwrap_or((rest, ""));
                let bt: f64 = num.parse().unwrap_or(0.0);
                format!(r#"{a}"bt":{:.3},{tail}"#, bt + 2.0 * 86400.0)
            });
            shifted.unwrap_or_else(|| body.to_string()).into_bytes()
        }
        Fault::Duplicates => body.as_bytes().to_vec(),
    }
}

/// Runs all devices until their counts or the duration are reached.
pub async fn run(opts: SimOptions) -> anyhow::Result<SimReport> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..opts.devices {
        let o = opts.clone();
        set.spawn(device(o, i));
    }
    let mut total = SimReport::default();
    while let Some(r) = set.join_next().await {
        let r = r??;
        total.packs += r.packs;
        total.readings += r.readings;
        total.faulty += r.faulty;
        total.duplicates += r.duplicates;
    }
    Ok(total)
}

async fn device(o: SimOptions, index: usize) -> anyhow::Result<SimReport> {
    let id = format!("{}{}", o.device_prefix, index + 1);
    let scenario = o
        .scenario
        .unwrap_or(Scenario::ALL[index % Scenario::ALL.len()]);
    let mut mo = MqttOptions::new(id.clone(), o.host.clone(), o.port);
    mo.set_keep_alive(Duration::from_secs(15))
        .set_clean_session(true)
        .set_inflight(200)
        .set_last_will(LastWill::new(
            topics::status(&id),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    if let Some((u, p)) = &o.credentials {
        mo.set_credentials(u.clone(), p.clone());
    }
    let (client, mut ev) = AsyncClient::new(mo, 256);
    // Drive the connection; count PUBACKs so the run ends only when the broker has everything.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let driver = tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let _ = acked_tx.send(());
                }
                // A clean DISCONNECT: the broker does not publish the last will.
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "simulator connection error; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    client
        .publish(topics::status(&id), QoS::AtLeastOnce, true, "online")
        .await?;
    let mut rng = Rng::new(o.seed ^ ((index as u64 + 1) << 32));
    let mut rep = SimReport::default();
    let started = std::time::Instant::now();
    let mut sent = 1u64; // the status message
    let mut k = 0u64;
    let mut last_t = 0i64;
    loop {
        if o.count > 0 && k >= o.count {
            break;
        }
        if o.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        // Strictly increasing device times keep every reading distinct.
        let t = now_ms().max(last_t + 1);
        last_t = t;
        let p = started.elapsed().as_secs_f64() / o.scenario_secs;
        let (body, n) = pack(
            &id,
            scenario,
            p,
            t,
            o.readings_per_pack,
            k as usize,
            &mut rng,
        );
        let fault = (!o.faults.is_empty() && rng.unit() < o.fault_rate)
            .then(|| o.faults[(rng.next_u64() % o.faults.len() as u64) as usize]);
        let payload = match fault {
            Some(f) => {
                rep.faulty += 1;
                faulty(&body, f, &mut rng)
            }
            None => {
                rep.readings += n as u64;
                body.into_bytes()
            }
        };
        client
            .publish(
                topics::vitals(&id),
                QoS::AtLeastOnce,
                false,
                payload.clone(),
            )
            .await?;
        sent += 1;
        if fault == Some(Fault::Duplicates) {
            rep.faulty -= 1;
            rep.readings += n as u64;
            rep.duplicates += 1;
            client
                .publish(topics::vitals(&id), QoS::AtLeastOnce, false, payload)
                .await?;
            sent += 1;
        }
        rep.packs += 1;
        k += 1;
        if !o.interval.is_zero() {
            tokio::time::sleep(o.interval).await;
        }
    }
    // Wait for the broker to acknowledge everything we published.
    let mut acked = 0;
    while acked < sent {
        match tokio::time::timeout(Duration::from_secs(30), acked_rx.recv()).await {
            Ok(Some(())) => acked += 1,
            _ => anyhow::bail!("device {id}: broker acknowledged {acked} of {sent} messages"),
        }
    }
    let _ = client.disconnect().await;
    if tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .is_err()
    {
        tracing::warn!(device = %id, "disconnect did not complete");
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::senml::{Limits, parse_pack};

    #[test]
    fn every_scenario_produces_valid_packs_along_its_course() {
        let mut rng = Rng::new(7);
        let t = 1_800_000_000_000;
        for s in Scenario::ALL {
            for step in 0..=20 {
                let (body, n) = pack("dev-1", s, step as f64 / 20.0, t, 11, 0, &mut rng);
                let r = parse_pack(body.as_bytes(), t, &Limits::default())
                    .unwrap_or_else(|e| panic!("{s:?} {step}: {e:?} in {body}"));
                assert_eq!(r.len(), n);
            }
        }
    }

    #[test]
    fn deteriorating_scenarios_move_the_right_way() {
        let mut rng = Rng::new(3);
        let hr = |s: Scenario, p: f64, rng: &mut Rng| {
            let (body, _) = pack("d", s, p, 1_800_000_000_000, 11, 0, rng);
            let r = parse_pack(body.as_bytes(), 1_800_000_000_000, &Limits::default()).unwrap();
            r.iter().find(|x| x.code == "sbp").unwrap().value
        };
        assert!(
            hr(Scenario::HaemorrhagicShock, 1.0, &mut rng)
                < hr(Scenario::HaemorrhagicShock, 0.0, &mut rng) - 20.0
        );
        assert!(
            hr(Scenario::HeadInjury, 1.0, &mut rng)
                > hr(Scenario::HeadInjury, 0.0, &mut rng) + 20.0
        );
    }

    #[test]
    fn faults_produce_the_intended_rejects() {
        let mut rng = Rng::new(5);
        let t = 1_800_000_000_000;
        let (body, _) = pack("d", Scenario::Stable, 0.0, t, 11, 0, &mut rng);
        let code = |b: Vec<u8>| {
            parse_pack(&b, t, &Limits::default())
                .unwrap_err()
                .code
                .as_str()
        };
        assert_eq!(code(faulty(&body, Fault::BadUnits, &mut rng)), "WRONG_UNIT");
        assert_eq!(
            code(faulty(&body, Fault::ClockSkew, &mut rng)),
            "TIME_IN_FUTURE"
        );
        assert!(["BAD_JSON", "BAD_ENCODING"].contains(&code(faulty(
            &body,
            Fault::Garbage,
            &mut rng
        ))));
    }

    #[test]
    fn small_packs_rotate_through_all_vitals() {
        let mut rng = Rng::new(1);
        let mut seen = std::collections::HashSet::new();
        for k in 0..11 {
            let (body, n) = pack(
                "d",
                Scenario::Stable,
                0.0,
                1_800_000_000_000,
                1,
                k,
                &mut rng,
            );
            assert_eq!(n, 1);
            let r = parse_pack(body.as_bytes(), 1_800_000_000_000, &Limits::default()).unwrap();
            seen.insert(r[0].code);
        }
        assert_eq!(seen.len(), 11);
    }
}
