//! Compact vital-sign series for case bundles: a device's regular run of one vital becomes one
//! FHIR `Observation` with `valueSampledData` (the values on a fixed time grid, `E` where a
//! sample is missing) instead of one `Observation` per reading. Manual readings and short or
//! irregular runs stay individual Observations. Lossless: each sample's arrival time rides along
//! as an offset list ([`EXT_ARRIVAL`]) and [`readings_from_bundle`] rebuilds every reading.
//! Pure: no IO, no clock.
//!
//! A run is cut where the device changes, where the spacing is not a whole multiple of the run's
//! period, or where more than [`MAX_GAP`] samples in a row are missing.

use serde_json::{Value, json};

use crate::model::{Observation, iso8601_ms};

/// Shortest run that is worth a SampledData Observation (shorter runs stay individual).
pub const MIN_RUN: usize = 6;
/// Most consecutive missing samples (`E`) a run may bridge.
pub const MAX_GAP: i64 = 4;
/// Extension (on a SampledData Observation): arrival time minus sample time, in ms, one integer
/// per non-`E` sample, space-separated, in data order.
pub const EXT_ARRIVAL: &str = "urn:hema3n:fhir:arrival-offsets-ms";

/// A regular run of one device's readings of one vital.
#[derive(Debug, Clone, PartialEq)]
pub struct Run<'a> {
    pub readings: Vec<&'a Observation>,
    /// Grid spacing in ms (> 0).
    pub period_ms: i64,
}

impl Run<'_> {
    pub fn start_ms(&self) -> i64 {
        self.readings[0].device_time_ms
    }
    pub fn end_ms(&self) -> i64 {
        self.readings[self.readings.len() - 1].device_time_ms
    }

    /// SampledData `data`: one token per grid point (`E` for a missing sample).
    pub fn data(&self) -> String {
        let mut out = String::with_capacity(self.readings.len() * 5);
        let mut slot = 0;
        for r in &self.readings {
            let at = (r.device_time_ms - self.start_ms()) / self.period_ms;
            while slot < at {
                out.push_str("E ");
                slot += 1;
            }
            out.push_str(&format!("{} ", r.value));
            slot += 1;
        }
        out.pop();
        out
    }

    /// Arrival offsets (received − device time, ms), one per reading.
    pub fn arrival_offsets(&self) -> String {
        self.readings
            .iter()
            .map(|r| (r.recv_time_ms - r.device_time_ms).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Splits device readings into regular runs (≥ [`MIN_RUN`] samples) and the rest, which stay
/// individual. Manual readings (no device) are always individual. Both lists keep input order
/// within a series; `rest` is in input order.
pub fn split(readings: &[Observation]) -> (Vec<Run<'_>>, Vec<&Observation>) {
    let mut series: Vec<((&str, &str), Vec<&Observation>)> = vec![];
    let mut rest = vec![];
    for r in readings {
        let Some(d) = r.device_id.as_deref() else {
            rest.push(r);
            continue;
        };
        match series.iter_mut().find(|(k, _)| *k == (d, r.code.as_str())) {
            Some((_, v)) => v.push(r),
            None => series.push(((d, r.code.as_str()), vec![r])),
        }
    }
    let mut runs = vec![];
    for (_, mut s) in series {
        s.sort_by_key(|r| (r.device_time_ms, r.id));
        let mut i = 0;
        while i < s.len() {
            let run = longest_run(&s[i..]);
            if run.len() >= MIN_RUN {
                let period_ms = run[1].device_time_ms - run[0].device_time_ms;
                i += run.len();
                runs.push(Run {
                    readings: run,
                    period_ms,
                });
            } else {
                rest.push(s[i]);
                i += 1;
            }
        }
    }
    rest.sort_by_key(|r| r.id);
    (runs, rest)
}

/// The longest regular run at the start of `s` (sorted by device time).
fn longest_run<'a>(s: &[&'a Observation]) -> Vec<&'a Observation> {
    if s.len() < 2 {
        return s.to_vec();
    }
    let p = s[1].device_time_ms - s[0].device_time_ms;
    if p <= 0 {
        return vec![s[0]];
    }
    let mut out = vec![s[0], s[1]];
    for w in s[1..].windows(2) {
        let d = w[1].device_time_ms - w[0].device_time_ms;
        if d <= 0 || d % p != 0 || d / p > MAX_GAP + 1 {
            break;
        }
        out.push(w[1]);
    }
    out
}

/// Sets what a SampledData Observation of `run` says on `o` (a vital measured in
/// `(unit, ucum code)`): the period it covers, the arrival offsets, the arrival of its last
/// sample and the samples.
pub fn fill(o: &mut Value, run: &Run<'_>, unit: &str, code: &str) {
    o["effectivePeriod"] =
        json!({ "start": iso8601_ms(run.start_ms()), "end": iso8601_ms(run.end_ms()) });
    o["extension"] = json!([{ "url": EXT_ARRIVAL, "valueString": run.arrival_offsets() }]);
    o["issued"] = json!(iso8601_ms(
        run.readings[run.readings.len() - 1].recv_time_ms
    ));
    o["valueSampledData"] = json!({
        "origin": { "value": 0, "unit": unit, "system": "http://unitsofmeasure.org", "code": code },
        "period": run.period_ms,
        "dimensions": 1,
        "data": run.data(),
    });
}

/// One reading as rebuilt from a bundle (ids are local to the appliance and not exported).
#[derive(Debug, Clone, PartialEq)]
pub struct Rebuilt {
    /// LOINC code of the vital.
    pub loinc: String,
    /// Device identifier, `None` for a manual reading.
    pub device: Option<String>,
    pub value: f64,
    pub device_time_ms: i64,
    pub recv_time_ms: i64,
}

fn parse_ms(s: &str) -> Option<i64> {
    crate::model::parse_iso8601_ms(s)
}

/// Every vital-sign reading a bundle carries, individual or sampled, in no particular order.
/// The receiver and the tests use it; it is the definition of "nothing lost".
pub fn readings_from_bundle(bundle: &Value) -> Result<Vec<Rebuilt>, String> {
    let resources: Vec<&Value> = bundle["entry"]
        .as_array()
        .ok_or("bundle has no entries")?
        .iter()
        .map(|e| &e["resource"])
        .collect();
    // Device identifiers by the reference a vital uses, looked up once.
    let devices: std::collections::HashMap<String, &str> = resources
        .iter()
        .filter(|x| x["resourceType"] == "Device")
        .filter_map(|d| {
            Some((
                format!("urn:uuid:{}", d["id"].as_str()?),
                d["identifier"][0]["value"].as_str()?,
            ))
        })
        .collect();
    let device_of = |r: &Value| -> Option<String> {
        devices
            .get(r["device"]["reference"].as_str()?)
            .map(|d| d.to_string())
    };
    let mut out = vec![];
    for r in &resources {
        let vital = r["resourceType"] == "Observation"
            && r["category"][0]["coding"][0]["code"] == "vital-signs";
        if !vital {
            continue;
        }
        let loinc = r["code"]["coding"][0]["code"]
            .as_str()
            .ok_or("vital without LOINC code")?
            .to_string();
        let device = device_of(r);
        if let Some(sd) = r.get("valueSampledData") {
            let start = r["effectivePeriod"]["start"]
                .as_str()
                .and_then(parse_ms)
                .ok_or("sampled vital without effectivePeriod.start")?;
            let period = sd["period"]
                .as_f64()
                .ok_or("sampled vital without period")? as i64;
            let offsets: Vec<i64> = r["extension"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["url"] == EXT_ARRIVAL)
                .and_then(|e| e["valueString"].as_str())
                .ok_or("sampled vital without arrival offsets")?
                .split(' ')
                .map(|t| t.parse().map_err(|_| format!("bad arrival offset {t:?}")))
                .collect::<Result<_, _>>()?;
            let mut k = 0;
            for (i, tok) in sd["data"].as_str().ok_or("no data")?.split(' ').enumerate() {
                if tok == "E" {
                    continue;
                }
                let value: f64 = tok.parse().map_err(|_| format!("bad sample {tok:?}"))?;
                let t = start + i as i64 * period;
                let off = *offsets.get(k).ok_or("fewer arrival offsets than samples")?;
                k += 1;
                out.push(Rebuilt {
                    loinc: loinc.clone(),
                    device: device.clone(),
                    value,
                    device_time_ms: t,
                    recv_time_ms: t + off,
                });
            }
            if k != offsets.len() {
                return Err("more arrival offsets than samples".into());
            }
        } else {
            let t = r["effectiveDateTime"]
                .as_str()
                .and_then(parse_ms)
                .ok_or("vital without time")?;
            let recv = r["issued"]
                .as_str()
                .and_then(parse_ms)
                .ok_or("vital without issued")?;
            let value = match (
                &r["valueQuantity"]["value"],
                &r["valueCodeableConcept"]["text"],
            ) {
                (Value::Number(n), _) => n.as_f64().ok_or("bad value")?,
                (_, Value::String(s)) => crate::vocab::avpu_level(s).ok_or("bad AVPU level")?,
                _ => return Err("vital without value".into()),
            };
            out.push(Rebuilt {
                loinc,
                device,
                value,
                device_time_ms: t,
                recv_time_ms: recv,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(id: i64, dev: Option<&str>, code: &str, t: i64, v: f64) -> Observation {
        Observation {
            id,
            device_id: dev.map(str::to_string),
            code: code.into(),
            value: v,
            device_time_ms: t,
            recv_time_ms: t + 17 + id % 5,
            source: if dev.is_some() { "device" } else { "manual" }.into(),
        }
    }

    #[test]
    fn regular_series_become_runs_with_gaps_as_e() {
        let mut rs = vec![];
        for i in 0..10 {
            if i == 4 || i == 5 {
                continue; // two missing samples
            }
            rs.push(obs(
                i,
                Some("mon"),
                "heart_rate",
                1000 + i * 5000,
                70.0 + i as f64,
            ));
        }
        rs.push(obs(99, None, "heart_rate", 3000, 88.0));
        let (runs, rest) = split(&rs);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].period_ms, 5000);
        assert_eq!(runs[0].data(), "70 71 72 73 E E 76 77 78 79");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].id, 99);
    }

    #[test]
    fn irregular_and_short_series_stay_individual() {
        let rs: Vec<_> = [0, 1000, 2500, 2600, 9000]
            .iter()
            .enumerate()
            .map(|(i, t)| obs(i as i64, Some("m"), "spo2", *t, 95.0))
            .collect();
        let (runs, rest) = split(&rs);
        assert!(runs.is_empty());
        assert_eq!(rest.len(), 5);
        // A gap longer than MAX_GAP cuts the run.
        let mut rs: Vec<_> = (0..6)
            .map(|i| obs(i, Some("m"), "spo2", i * 1000, 95.0))
            .collect();
        rs.extend((0..6).map(|i| obs(10 + i, Some("m"), "spo2", 20_000 + i * 1000, 96.0)));
        let (runs, rest) = split(&rs);
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert!(rest.is_empty());
    }
}
