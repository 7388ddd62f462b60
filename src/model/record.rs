//! The patient care record beyond vitals: what a crew records during a call (NEMSIS v3.5.1's
//! sections, in the shape a tablet edits them), and its validation. No IO here.
//!
//! A record is a set of *entries*. Singleton [`Section`]s (times, scene, history, …) are edited
//! by JSON Merge Patch and have one current version; [`EventKind`] entries (oxygen, procedures,
//! medications, assessments) are added one by one. Every change makes a new version of an
//! entry; nothing is overwritten, and a version may mark the entry entered-in-error. Clinical
//! codes come from short built-in lists ([`codes`]) that map to NEMSIS's code sets.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod codes;
mod validate;

pub use validate::{
    Bounds, EventBody, FieldError, MAX_AHEAD_MS, MAX_BEFORE_CASE_MS, MAX_ITEMS, MAX_NARRATIVE,
    MAX_TEXT, SectionBody, field_error,
};

named_enum! {
    /// Singleton parts of the record: one current version each, edited by merge patch.
    pub enum Section {
        Incident = "incident",
        Times = "times",
        Scene = "scene",
        Situation = "situation",
        History = "history",
        Disposition = "disposition",
        Narrative = "narrative",
        /// NEWS2 SpO2 scale 2 (confirmed hypercapnic respiratory failure), set by a clinician.
        Spo2Scale = "spo2_scale",
    }
}

named_enum! {
    /// Repeated, timed parts of the record.
    pub enum EventKind {
        Oxygen = "oxygen",
        Procedure = "procedure",
        Medication = "medication",
        Assessment = "assessment",
    }
}

/// Incident: numbers, unit and crew.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incident {
    pub incident_number: Option<String>,
    pub run_number: Option<String>,
    pub unit: Option<String>,
    pub dispatch_reason: Option<codes::DispatchReason>,
    pub response_mode: Option<codes::ResponseMode>,
    pub crew: Option<Vec<CrewMember>>,
}

/// One crew member: an account id and their role on this call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrewMember {
    pub account: String,
    pub role: codes::CrewRole,
}

/// NEMSIS eTimes, Unix milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Times {
    pub call_received_ms: Option<i64>,
    pub dispatched_ms: Option<i64>,
    pub en_route_ms: Option<i64>,
    pub on_scene_ms: Option<i64>,
    pub at_patient_ms: Option<i64>,
    pub left_scene_ms: Option<i64>,
    pub at_destination_ms: Option<i64>,
    pub transfer_of_care_ms: Option<i64>,
    pub in_service_ms: Option<i64>,
}

impl Times {
    /// The times in the order a call passes them.
    pub fn ordered(&self) -> [(&'static str, Option<i64>); 9] {
        [
            ("call_received_ms", self.call_received_ms),
            ("dispatched_ms", self.dispatched_ms),
            ("en_route_ms", self.en_route_ms),
            ("on_scene_ms", self.on_scene_ms),
            ("at_patient_ms", self.at_patient_ms),
            ("left_scene_ms", self.left_scene_ms),
            ("at_destination_ms", self.at_destination_ms),
            ("transfer_of_care_ms", self.transfer_of_care_ms),
            ("in_service_ms", self.in_service_ms),
        ]
    }
}

/// Where the call happened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scene {
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub address: Option<String>,
    pub description: Option<String>,
    pub patient_count: Option<u32>,
    pub mass_casualty: Option<bool>,
}

/// An impression: an ICD-10-CM code from the built-in list and an optional free-text note.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Impression {
    pub code: String,
    #[serde(default)]
    pub note: Option<String>,
}

/// The situation beyond the chief complaint (which lives on the case).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Situation {
    pub symptom_onset_ms: Option<i64>,
    pub last_known_well_ms: Option<i64>,
    pub primary_impression: Option<Impression>,
    pub secondary_impressions: Option<Vec<Impression>>,
    pub possible_injury: Option<bool>,
    pub cardiac_arrest: Option<codes::CardiacArrest>,
}

/// History: allergies, conditions, current medications, advance directive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    /// "No known drug allergies" — a pertinent negative, exclusive with `allergies`.
    pub no_known_allergies: Option<bool>,
    pub allergies: Option<Vec<String>>,
    pub medical_history: Option<Vec<String>>,
    pub current_medications: Option<Vec<String>>,
    pub advance_directive: Option<codes::AdvanceDirective>,
}

/// How the call ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disposition {
    pub patient_disposition: Option<codes::PatientDisposition>,
    pub transport: Option<codes::TransportDisposition>,
    pub transport_mode: Option<codes::TransportMode>,
    pub destination: Option<String>,
    pub destination_reason: Option<codes::DestinationReason>,
    /// Expected arrival at the destination (sent in the pre-alert).
    pub eta_ms: Option<i64>,
    /// Time-critical conditions the crew flagged to the destination (pre-alert, eDisposition.24).
    pub alerts: Option<Vec<codes::PreArrivalAlert>>,
    /// Name of the clinician who took over care.
    pub transfer_to: Option<String>,
    /// Role or unit of that clinician (e.g. "ED charge nurse").
    pub transfer_to_role: Option<String>,
}

/// The free-text narrative.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Narrative {
    pub text: Option<String>,
}

/// NEWS2 SpO2 scale 2: only for confirmed hypercapnic respiratory failure, with the reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spo2Scale {
    pub scale2: Option<bool>,
    pub reason: Option<String>,
}

/// Supplemental oxygen started, changed or stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Oxygen {
    pub at_ms: i64,
    pub action: codes::OxygenAction,
    /// Litres per minute (required unless stopping).
    #[serde(default)]
    pub flow_l_min: Option<f64>,
    #[serde(default)]
    pub device: Option<codes::OxygenDevice>,
}

/// A procedure or intervention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Procedure {
    pub at_ms: i64,
    pub procedure: codes::ProcedureCode,
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default = "one")]
    pub attempts: u32,
    pub successful: bool,
    /// Account id of who performed it (default: who records it).
    #[serde(default)]
    pub performer: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

fn one() -> u32 {
    1
}

/// A medication given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MedicationGiven {
    pub at_ms: i64,
    /// From the quick-pick list; `other` with a name in `note`.
    pub medication: codes::MedicationCode,
    /// Required for new entries; absent only on entries carried over from the free-text
    /// medication list of schema ≤ 7 (their text is in `note`).
    #[serde(default)]
    pub dose: Option<f64>,
    #[serde(default)]
    pub dose_unit: Option<codes::DoseUnit>,
    #[serde(default)]
    pub route: Option<codes::MedRoute>,
    #[serde(default)]
    pub response: Option<codes::MedResponse>,
    #[serde(default)]
    pub performer: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

/// A focused assessment: GCS parts, pupils, skin, stroke scale (BE-FAST), pain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assessment {
    pub at_ms: i64,
    #[serde(default)]
    pub gcs_eye: Option<u32>,
    #[serde(default)]
    pub gcs_verbal: Option<u32>,
    #[serde(default)]
    pub gcs_motor: Option<u32>,
    #[serde(default)]
    pub pupils: Option<codes::Pupils>,
    #[serde(default)]
    pub skin: Option<codes::Skin>,
    /// BE-FAST: `true` = positive finding.
    #[serde(default)]
    pub befast: Option<BeFast>,
    /// 0–10.
    #[serde(default)]
    pub pain: Option<u32>,
}

/// BE-FAST stroke screen; each `true` is a positive (abnormal) finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeFast {
    pub balance: bool,
    pub eyes: bool,
    pub face: bool,
    pub arm: bool,
    pub speech: bool,
}

impl BeFast {
    pub fn positive(&self) -> bool {
        self.balance || self.eyes || self.face || self.arm || self.speech
    }
}

impl Assessment {
    pub fn gcs_total(&self) -> Option<u32> {
        Some(self.gcs_eye? + self.gcs_verbal? + self.gcs_motor?)
    }
}

/// Applies an RFC 7386 JSON Merge Patch to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = Value::Object(serde_json::Map::new());
        }
        let t = target.as_object_mut().expect("object");
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

/// What triage takes from the record: is the patient on supplemental oxygen now, and is SpO2
/// scale 2 in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OxygenState {
    pub on_oxygen: bool,
    pub scale2: bool,
}

impl OxygenState {
    /// From the current oxygen events (any order; entered-in-error ones already removed) and
    /// the current scale section.
    pub fn from_record(oxygen: &[Oxygen], scale: Option<&Spo2Scale>, now_ms: i64) -> Self {
        let latest = oxygen
            .iter()
            .filter(|o| o.at_ms <= now_ms + MAX_AHEAD_MS)
            .max_by_key(|o| o.at_ms);
        OxygenState {
            on_oxygen: latest.is_some_and(|o| o.action != codes::OxygenAction::Stop),
            scale2: scale.and_then(|s| s.scale2).unwrap_or(false),
        }
    }
}

/// State of one version of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    Recorded,
    EnteredInError,
}

impl EntryState {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Recorded => "recorded",
            EntryState::EnteredInError => "entered_in_error",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "recorded" => Some(EntryState::Recorded),
            "entered_in_error" => Some(EntryState::EnteredInError),
            _ => None,
        }
    }
}

/// One decrypted version of a record entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntryVersion {
    pub entry_id: String,
    pub kind: String,
    pub version: i64,
    pub state: EntryState,
    pub recorded_at_ms: i64,
    pub recorded_by: String,
    /// The entry's content (the last recorded content for an entered-in-error version).
    pub content: Value,
    /// Why the entry was marked entered-in-error.
    pub reason: Option<String>,
}

/// Every version of a case's record entries, oldest first per entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaseRecord {
    pub versions: Vec<EntryVersion>,
}

impl CaseRecord {
    /// The latest version of each entry (including entered-in-error ones), in entry order.
    pub fn latest(&self) -> Vec<&EntryVersion> {
        let mut out: Vec<&EntryVersion> = Vec::new();
        for v in &self.versions {
            match out.iter_mut().find(|x| x.entry_id == v.entry_id) {
                Some(x) if x.version < v.version => *x = v,
                Some(_) => {}
                None => out.push(v),
            }
        }
        out
    }

    /// Current (recorded, not in error) entries of one kind.
    pub fn current(&self, kind: &str) -> Vec<&EntryVersion> {
        self.latest()
            .into_iter()
            .filter(|v| v.kind == kind && v.state == EntryState::Recorded)
            .collect()
    }

    /// A section's current content, typed.
    pub fn section<T: serde::de::DeserializeOwned>(&self, s: Section) -> Option<T> {
        self.current(s.as_str())
            .first()
            .and_then(|v| serde_json::from_value(v.content.clone()).ok())
    }

    /// Current events of one kind with their content typed, in time order.
    pub fn events<T: serde::de::DeserializeOwned>(&self, k: EventKind) -> Vec<(&EntryVersion, T)> {
        let mut out: Vec<(&EntryVersion, T)> = self
            .current(k.as_str())
            .into_iter()
            .filter_map(|v| Some((v, serde_json::from_value(v.content.clone()).ok()?)))
            .collect();
        out.sort_by_key(|(v, _)| v.content.get("at_ms").and_then(Value::as_i64));
        out
    }

    /// Oxygen and SpO2 scale as triage uses them.
    pub fn oxygen_state(&self, now_ms: i64) -> OxygenState {
        let oxygen: Vec<_> = self
            .events::<Oxygen>(EventKind::Oxygen)
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        let scale = self.section::<Spo2Scale>(Section::Spo2Scale);
        OxygenState::from_record(&oxygen, scale.as_ref(), now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const B: Bounds = Bounds {
        now_ms: 1_800_000_000_000,
        case_created_ms: 1_800_000_000_000 - 3_600_000,
    };

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": [1]});
        merge_patch(&mut t, &json!({"a": [2, 3], "n": null}));
        assert_eq!(t, json!({"a": [2, 3]}));
    }

    #[test]
    fn times_out_of_order_name_the_later_field() {
        let e = Section::Times
            .validate(
                json!({"call_received_ms": B.now_ms - 1000, "transfer_of_care_ms": B.now_ms - 2000}),
                &B,
            )
            .unwrap_err();
        assert_eq!(e.field, "transfer_of_care_ms");
        assert!(e.message.contains("call_received_ms"), "{e}");
        let e = Section::Times
            .validate(json!({"on_scene_ms": B.now_ms + 86_400_000}), &B)
            .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("on_scene_ms", "is in the future")
        );
        let e = Section::Times
            .validate(json!({"on_scene_ms": 0}), &B)
            .unwrap_err();
        assert_eq!(e.field, "on_scene_ms");
    }

    #[test]
    fn unknown_fields_and_bad_codes_are_named() {
        let e = Section::Scene
            .validate(json!({"colour": "red"}), &B)
            .unwrap_err();
        assert_eq!(e.field, "colour");
        let e = Section::Situation
            .validate(json!({"primary_impression": {"code": "X99.999"}}), &B)
            .unwrap_err();
        assert_eq!(e.field, "primary_impression.code");
        let e = EventKind::Procedure
            .validate(
                json!({"at_ms": B.now_ms, "procedure": "teleport", "successful": true}),
                &B,
            )
            .unwrap_err();
        assert!(e.message.contains("unknown variant"), "{e}");
    }

    #[test]
    fn oxygen_needs_flow_and_device_unless_stopping() {
        let at = B.now_ms - 1000;
        assert!(
            EventKind::Oxygen
                .validate(json!({"at_ms": at, "action": "start"}), &B)
                .is_err()
        );
        let e = EventKind::Oxygen
            .validate(json!({"at_ms": at, "action": "start", "flow_l_min": 0}), &B)
            .unwrap_err();
        assert_eq!(e.field, "flow_l_min");
        assert!(EventKind::Oxygen
            .validate(json!({"at_ms": at, "action": "start", "flow_l_min": 2, "device": "nasal_cannula"}), &B)
            .is_ok());
        assert!(
            EventKind::Oxygen
                .validate(json!({"at_ms": at, "action": "stop"}), &B)
                .is_ok()
        );
    }

    #[test]
    fn oxygen_state_follows_the_latest_event() {
        let o = |at, action| Oxygen {
            at_ms: at,
            action,
            flow_l_min: None,
            device: None,
        };
        use codes::OxygenAction::*;
        assert!(!OxygenState::from_record(&[], None, 10).on_oxygen);
        assert!(OxygenState::from_record(&[o(1, Start)], None, 10).on_oxygen);
        assert!(!OxygenState::from_record(&[o(5, Stop), o(1, Start)], None, 10).on_oxygen);
        assert!(
            OxygenState::from_record(&[o(1, Start), o(5, Stop), o(7, Change)], None, 10).on_oxygen
        );
        let s = Spo2Scale {
            scale2: Some(true),
            reason: Some("COPD with documented hypercapnia".into()),
        };
        assert!(OxygenState::from_record(&[], Some(&s), 10).scale2);
    }

    #[test]
    fn scale2_needs_a_reason_and_allergies_exclude_nkda() {
        assert_eq!(
            Section::Spo2Scale
                .validate(json!({"scale2": true}), &B)
                .unwrap_err()
                .field,
            "reason"
        );
        assert_eq!(
            Section::History
                .validate(
                    json!({"no_known_allergies": true, "allergies": ["penicillin"]}),
                    &B
                )
                .unwrap_err()
                .field,
            "no_known_allergies"
        );
    }
}
