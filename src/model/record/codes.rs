//! The record's closed code lists: the quick picks a crew chooses from, each with its label and
//! its code in NEMSIS v3.5.1 (NEMSIS's own codes, ICD-10-CM, SNOMED CT or RxNorm, as the
//! element requires). `GET /api/v1/record/codes` serves them to the tablet.

use serde::{Deserialize, Serialize};

/// A closed list: serde by name, a clinical label and the NEMSIS code.
macro_rules! coded {
    ($(#[$m:meta])* pub enum $name:ident { $($v:ident = ($s:literal, $code:literal, $label:literal),)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $(#[serde(rename = $s)] $v,)+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v,)+];
            /// The wire name.
            pub fn as_str(self) -> &'static str { match self { $($name::$v => $s,)+ } }
            /// The NEMSIS code of the value.
            pub fn nemsis(self) -> &'static str { match self { $($name::$v => $code,)+ } }
            /// What the tablet shows.
            pub fn label(self) -> &'static str { match self { $($name::$v => $label,)+ } }
            /// `[{value, label}]` for the tablet's pickers.
            pub fn options() -> serde_json::Value {
                serde_json::Value::Array(Self::ALL.iter().map(|v| serde_json::json!({"value": v.as_str(), "label": v.label()})).collect())
            }
        }
    };
}

coded! {
    /// eCrew.03.
    pub enum CrewRole {
        Primary = ("primary", "2403011", "Primary caregiver"),
        Secondary = ("secondary", "2403007", "Other caregiver"),
        Driver = ("driver", "2403001", "Driver"),
        Other = ("other", "2403005", "Other"),
    }
}

coded! {
    /// eDispatch.01: the complaint reported by dispatch.
    pub enum DispatchReason {
        AbdominalPain = ("abdominal_pain", "2301001", "Abdominal pain"),
        AllergicReaction = ("allergic_reaction", "2301003", "Allergic reaction"),
        BreathingProblem = ("breathing_problem", "2301013", "Breathing problem"),
        CardiacArrest = ("cardiac_arrest", "2301019", "Cardiac arrest / death"),
        ChestPain = ("chest_pain", "2301021", "Chest pain (non-traumatic)"),
        Seizure = ("seizure", "2301025", "Convulsions / seizure"),
        Diabetic = ("diabetic", "2301027", "Diabetic problem"),
        Fall = ("fall", "2301033", "Fall"),
        Overdose = ("overdose", "2301053", "Overdose / poisoning"),
        Psychiatric = ("psychiatric", "2301059", "Psychiatric problem"),
        SickPerson = ("sick_person", "2301061", "Sick person"),
        Stroke = ("stroke", "2301067", "Stroke / CVA"),
        TrafficIncident = ("traffic_incident", "2301069", "Traffic incident"),
        TraumaticInjury = ("traumatic_injury", "2301073", "Traumatic injury"),
        Unconscious = ("unconscious", "2301077", "Unconscious / fainting"),
        Unknown = ("unknown", "2301079", "Unknown problem / person down"),
        AlteredMentalStatus = ("altered_mental_status", "2301085", "Altered mental status"),
        Other = ("other", "2301051", "No other appropriate choice"),
    }
}

coded! {
    /// eResponse.23: how the unit drove to the scene.
    pub enum ResponseMode {
        Emergent = ("emergent", "2223001", "Emergent (lights and siren)"),
        Downgraded = ("downgraded", "2223003", "Emergent, downgraded"),
        NonEmergent = ("non_emergent", "2223005", "Non-emergent"),
        Upgraded = ("upgraded", "2223007", "Non-emergent, upgraded"),
    }
}

coded! {
    /// eArrest.01.
    pub enum CardiacArrest {
        No = ("no", "3001001", "No"),
        BeforeEms = ("before_ems", "3001003", "Yes, before EMS arrival"),
        AfterEms = ("after_ems", "3001005", "Yes, after EMS arrival"),
    }
}

coded! {
    /// eHistory.05.
    pub enum AdvanceDirective {
        None = ("none", "3105005", "None"),
        StateDnr = ("state_dnr", "3105011", "DNR / medical order form"),
        LivingWill = ("living_will", "3105003", "Living will"),
        FamilyRequestDnr = ("family_request_dnr", "3105001", "Family requests DNR (no document)"),
        Other = ("other", "3105007", "Other"),
    }
}

coded! {
    /// eDisposition.28.
    pub enum PatientDisposition {
        CareProvided = ("care_provided", "4228001", "Evaluated, care provided"),
        RefusedCare = ("refused_care", "4228003", "Evaluated, refused care"),
        NoCareRequired = ("no_care_required", "4228005", "Evaluated, no care required"),
        RefusedEvaluation = ("refused_evaluation", "4228007", "Refused evaluation and care"),
    }
}

coded! {
    /// eDisposition.30.
    pub enum TransportDisposition {
        ThisUnit = ("this_unit", "4230001", "Transported by this unit"),
        OtherUnit = ("other_unit", "4230005", "Transported by another unit"),
        RefusedTransport = ("refused_transport", "4230009", "Patient refused transport"),
        NoTransport = ("no_transport", "4230013", "No transport"),
    }
}

coded! {
    /// eDisposition.17.
    pub enum TransportMode {
        Emergent = ("emergent", "4217001", "Emergent (lights and siren)"),
        Downgraded = ("downgraded", "4217003", "Emergent, downgraded"),
        NonEmergent = ("non_emergent", "4217005", "Non-emergent"),
        Upgraded = ("upgraded", "4217007", "Non-emergent, upgraded"),
    }
}

coded! {
    /// eDisposition.20.
    pub enum DestinationReason {
        Closest = ("closest", "4220001", "Closest facility"),
        SpecialtyCenter = ("specialty_center", "4220021", "Regional specialty center"),
        Protocol = ("protocol", "4220019", "Protocol"),
        PatientChoice = ("patient_choice", "4220015", "Patient's choice"),
        FamilyChoice = ("family_choice", "4220005", "Family's choice"),
        MedicalDirection = ("medical_direction", "4220011", "Medical direction"),
        Diversion = ("diversion", "4220003", "Diversion"),
        Other = ("other", "4220013", "Other"),
    }
}

coded! {
    /// eDisposition.24: the destination team the crew alerted before arrival (a time-critical
    /// condition). Each one sent re-sends the pre-alert.
    pub enum PreArrivalAlert {
        Stroke = ("stroke", "4224015", "Stroke alert"),
        Stemi = ("stemi", "4224013", "STEMI alert"),
        Trauma = ("trauma", "4224017", "Trauma alert"),
        Sepsis = ("sepsis", "4224019", "Sepsis alert"),
        CardiacArrest = ("cardiac_arrest", "4224005", "Cardiac arrest alert"),
        PediatricTrauma = ("pediatric_trauma", "4224011", "Pediatric trauma alert"),
        Obstetrics = ("obstetrics", "4224007", "Obstetric alert"),
        Other = ("other", "4224009", "Other team alert"),
    }
}

coded! {
    /// Oxygen events (recorded in NEMSIS as the medication oxygen, RxNorm 7806).
    pub enum OxygenAction {
        Start = ("start", "start", "Started"),
        Change = ("change", "change", "Flow changed"),
        Stop = ("stop", "stop", "Stopped"),
    }
}

coded! {
    /// Oxygen delivery devices, as eMedications.04 routes.
    pub enum OxygenDevice {
        NasalCannula = ("nasal_cannula", "9927025", "Nasal cannula"),
        SimpleMask = ("simple_mask", "9927041", "Simple mask"),
        NonRebreather = ("non_rebreather", "9927031", "Non-rebreather mask"),
        Venturi = ("venturi", "9927057", "Venturi mask"),
        Bvm = ("bvm", "9927065", "Bag-valve-mask"),
        Cpap = ("cpap", "9927067", "CPAP"),
        Nebulizer = ("nebulizer", "9927071", "Nebulizer"),
        BlowBy = ("blow_by", "9927001", "Blow-by"),
    }
}

coded! {
    /// eProcedures.03 (SNOMED CT).
    pub enum ProcedureCode {
        IvAccess = ("iv_access", "392230005", "IV access"),
        IoAccess = ("io_access", "430824005", "IO access"),
        Opa = ("opa", "7443007", "Oropharyngeal airway"),
        Npa = ("npa", "182692007", "Nasopharyngeal airway"),
        Intubation = ("intubation", "112798008", "Endotracheal intubation"),
        Supraglottic = ("supraglottic", "427753009", "Supraglottic airway"),
        Suction = ("suction", "230040009", "Airway suction"),
        Cpr = ("cpr", "89666000", "CPR"),
        Defibrillation = ("defibrillation", "426220008", "Defibrillation"),
        Cardioversion = ("cardioversion", "250980009", "Synchronised cardioversion"),
        Pacing = ("pacing", "18590009", "Transcutaneous pacing"),
        Ecg12 = ("ecg_12_lead", "268400002", "12-lead ECG"),
        Glucose = ("glucose", "33747003", "Blood glucose"),
        Splint = ("splint", "79321009", "Splinting"),
        SpinalRestriction = ("spinal_restriction", "398041008", "Spinal motion restriction"),
        Tourniquet = ("tourniquet", "20655006", "Tourniquet"),
        WoundCare = ("wound_care", "225358003", "Wound care / dressing"),
        Other = ("other", "71388002", "Other procedure"),
    }
}

coded! {
    /// eMedications.03 (RxNorm ingredient codes) for the quick-pick list.
    pub enum MedicationCode {
        Oxygen = ("oxygen", "7806", "Oxygen"),
        Salbutamol = ("salbutamol", "435", "Salbutamol (albuterol)"),
        Ipratropium = ("ipratropium", "7213", "Ipratropium"),
        Aspirin = ("aspirin", "1191", "Aspirin"),
        Nitroglycerin = ("nitroglycerin", "4917", "Nitroglycerin"),
        Epinephrine = ("epinephrine", "3992", "Epinephrine (adrenaline)"),
        Amiodarone = ("amiodarone", "703", "Amiodarone"),
        Adenosine = ("adenosine", "296", "Adenosine"),
        Naloxone = ("naloxone", "7242", "Naloxone"),
        Glucose = ("glucose", "4850", "Glucose (dextrose)"),
        Glucagon = ("glucagon", "4832", "Glucagon"),
        Ondansetron = ("ondansetron", "26225", "Ondansetron"),
        Fentanyl = ("fentanyl", "4337", "Fentanyl"),
        Morphine = ("morphine", "7052", "Morphine"),
        Midazolam = ("midazolam", "6960", "Midazolam"),
        SodiumChloride = ("sodium_chloride", "9863", "Sodium chloride 0.9 %"),
        Other = ("other", "", "Other (name in note)"),
    }
}

coded! {
    /// eMedications.06.
    pub enum DoseUnit {
        Mg = ("mg", "3706021", "mg"),
        Mcg = ("mcg", "3706015", "mcg"),
        G = ("g", "3706001", "g"),
        Ml = ("ml", "3706025", "mL"),
        L = ("l", "3706009", "L"),
        Units = ("units", "3706049", "units"),
        Puffs = ("puffs", "3706043", "puffs"),
        Lpm = ("l_min", "3706035", "L/min"),
    }
}

coded! {
    /// eMedications.04.
    pub enum MedRoute {
        Iv = ("iv", "9927023", "IV"),
        Io = ("io", "9927021", "IO"),
        Im = ("im", "9927015", "IM"),
        Intranasal = ("intranasal", "9927017", "Intranasal"),
        Oral = ("oral", "9927035", "Oral"),
        Sublingual = ("sublingual", "9927047", "Sublingual"),
        Inhalation = ("inhalation", "9927009", "Inhaled"),
        Nebulizer = ("nebulizer", "9927071", "Nebulised"),
        Subcutaneous = ("subcutaneous", "9927045", "Subcutaneous"),
        Topical = ("topical", "9927049", "Topical"),
        AutoInjector = ("auto_injector", "9927063", "Auto-injector"),
    }
}

coded! {
    /// eMedications.07 / eProcedures.08.
    pub enum MedResponse {
        Improved = ("improved", "9916001", "Improved"),
        Unchanged = ("unchanged", "9916003", "Unchanged"),
        Worse = ("worse", "9916005", "Worse"),
    }
}

coded! {
    /// eExam.18 (both eyes).
    pub enum Pupils {
        Perrl = ("perrl", "3518047", "PERRL"),
        Sluggish = ("sluggish", "3518053", "Sluggish"),
        NonReactive = ("non_reactive", "3518037", "Non-reactive"),
        Dilated = ("dilated", "3518061", "Dilated"),
        PinPoint = ("pin_point", "3518063", "Pin-point"),
    }
}

coded! {
    /// eExam.04.
    pub enum Skin {
        Normal = ("normal", "3504021", "Normal"),
        Pale = ("pale", "3504025", "Pale"),
        Cyanotic = ("cyanotic", "3504005", "Cyanotic"),
        Diaphoretic = ("diaphoretic", "3504007", "Diaphoretic"),
        Flushed = ("flushed", "3504011", "Flushed"),
        Mottled = ("mottled", "3504019", "Mottled"),
        Cold = ("cold", "3504003", "Cold"),
        Hot = ("hot", "3504013", "Hot"),
    }
}

/// One primary/secondary impression of the built-in list: ICD-10-CM code, label, the organ
/// system (eSituation.08) and whether it is an injury (eInjury applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImpressionCode {
    pub code: &'static str,
    pub label: &'static str,
    pub organ_system: &'static str,
    pub injury: bool,
}

const fn imp(
    code: &'static str,
    label: &'static str,
    organ_system: &'static str,
    injury: bool,
) -> ImpressionCode {
    ImpressionCode {
        code,
        label,
        organ_system,
        injury,
    }
}

/// Common EMS impressions (ICD-10-CM), searchable on the tablet.
pub const IMPRESSIONS: &[ImpressionCode] = &[
    imp("I46.9", "Cardiac arrest", "2808003", false),
    imp("I21.3", "STEMI", "2808003", false),
    imp("I24.9", "Acute coronary syndrome", "2808003", false),
    imp("R07.9", "Chest pain, unspecified", "2808003", false),
    imp("I49.9", "Cardiac arrhythmia", "2808003", false),
    imp("I50.9", "Heart failure", "2808003", false),
    imp("R57.9", "Shock", "2808003", false),
    imp("I63.9", "Stroke (cerebral infarction)", "2808005", false),
    imp("G45.9", "Transient ischaemic attack", "2808005", false),
    imp("R56.9", "Seizure", "2808005", false),
    imp("R55", "Syncope", "2808005", false),
    imp("R41.82", "Altered mental status", "2808005", false),
    imp("J44.1", "COPD exacerbation", "2808019", false),
    imp("J45.901", "Asthma attack", "2808019", false),
    imp("J18.9", "Pneumonia", "2808019", false),
    imp("R06.02", "Shortness of breath", "2808019", false),
    imp("T78.2XXA", "Anaphylaxis", "2808013", false),
    imp("A41.9", "Sepsis", "2808011", false),
    imp("E16.2", "Hypoglycaemia", "2808007", false),
    imp(
        "E11.65",
        "Hyperglycaemia (type 2 diabetes)",
        "2808007",
        false,
    ),
    imp("T40.2X1A", "Opioid overdose", "2808001", false),
    imp(
        "T50.901A",
        "Poisoning / overdose, unspecified",
        "2808001",
        false,
    ),
    imp("F10.129", "Alcohol intoxication", "2808001", false),
    imp("F41.9", "Anxiety", "2808001", false),
    imp("R10.9", "Abdominal pain", "2808009", false),
    imp("K92.2", "GI bleeding", "2808009", false),
    imp("O80", "Childbirth", "2808017", false),
    imp("T14.90XA", "Injury, unspecified", "2808015", true),
    imp("S06.9X0A", "Head injury", "2808005", true),
    imp("S72.90XA", "Fracture of femur", "2808015", true),
    imp("T07.XXXA", "Multiple injuries", "2808015", true),
    imp("T30.0", "Burn", "2808015", true),
    imp("T68.XXXA", "Hypothermia", "2808011", false),
    imp("Z71.1", "No complaint / worried well", "2808011", false),
];

/// The impression with this ICD-10-CM code, if it is in the list.
pub fn impression(code: &str) -> Option<&'static ImpressionCode> {
    IMPRESSIONS.iter().find(|i| i.code == code)
}

/// Every list, for the tablet (`GET /api/v1/record/codes`).
pub fn catalogue() -> serde_json::Value {
    serde_json::json!({
        "crew_role": CrewRole::options(),
        "dispatch_reason": DispatchReason::options(),
        "response_mode": ResponseMode::options(),
        "cardiac_arrest": CardiacArrest::options(),
        "advance_directive": AdvanceDirective::options(),
        "patient_disposition": PatientDisposition::options(),
        "transport_disposition": TransportDisposition::options(),
        "transport_mode": TransportMode::options(),
        "destination_reason": DestinationReason::options(),
        "pre_arrival_alert": PreArrivalAlert::options(),
        "oxygen_action": OxygenAction::options(),
        "oxygen_device": OxygenDevice::options(),
        "procedure": ProcedureCode::options(),
        "medication": MedicationCode::options(),
        "dose_unit": DoseUnit::options(),
        "med_route": MedRoute::options(),
        "med_response": MedResponse::options(),
        "pupils": Pupils::options(),
        "skin": Skin::options(),
        "impression": IMPRESSIONS.iter().map(|i| serde_json::json!({"value": i.code, "label": i.label})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impression_codes_are_unique_and_match_nemsis_pattern() {
        // eSituation.11's pattern in the 3.5.1 XSD, restated.
        let ok = |c: &str| {
            let b = c.as_bytes();
            b.len() >= 3
                && b[0].is_ascii_uppercase()
                && b[1].is_ascii_digit()
                && b[2].is_ascii_alphanumeric()
                && (b.len() == 3
                    || (b[3] == b'.'
                        && (2..=5).contains(&(b.len() - 3))
                        && b[4..]
                            .iter()
                            .all(|x| x.is_ascii_digit() || x.is_ascii_uppercase())))
        };
        let mut seen = std::collections::HashSet::new();
        for i in IMPRESSIONS {
            assert!(ok(i.code), "{}", i.code);
            assert!(seen.insert(i.code), "duplicate {}", i.code);
        }
    }
}
