//! NEMSIS v3.5.1 `EMSDataSet` export of one case (the document an agency submits to its state
//! EMS office), built from the same [`CaseExport`] as the FHIR bundle. Pure: no IO, no clock.
//!
//! Absent data is written as NEMSIS asks: a nillable element gets `xsi:nil="true"` with a NOT
//! value (`NV`: 7701001 not applicable, 7701003 not recorded) or a pertinent negative (`PN`);
//! elements NEMSIS requires without a NOT value (dispatch reason, response mode, unit notified
//! and back in service times) must be recorded first: [`export`] lists them otherwise.
//! Entries marked entered-in-error are left out. Codes come from `model::record::codes`.

use std::fmt::Write;

use crate::config::NemsisConfig;

mod groups;
mod xml;

use crate::model::record::{
    Assessment, Disposition, EventKind, History, Incident, MedicationGiven, Narrative, Oxygen,
    Procedure, Scene, Section, Situation, Times, codes,
};
use crate::model::{CaseExport, Sex, age_years};
use groups::{acuity, arrest, disposition, levels, med_group, vital_sets, vitals_group};
use xml::{NO, NOT_APPLICABLE, NOT_RECORDED, Xml, YES, dt};

/// Why a case cannot be exported yet: the fields NEMSIS requires that the record lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the record lacks what NEMSIS requires: {}", .missing.join(", "))]
pub struct Incomplete {
    /// Record fields, e.g. `incident.dispatch_reason`, `times.in_service_ms`.
    pub missing: Vec<&'static str>,
}

/// Builds the `EMSDataSet` document of a case.
pub fn export(x: &CaseExport, agency: &NemsisConfig) -> Result<String, Incomplete> {
    let r = &x.record;
    let incident = r.section::<Incident>(Section::Incident).unwrap_or_default();
    let times = r.section::<Times>(Section::Times).unwrap_or_default();
    let scene = r.section::<Scene>(Section::Scene).unwrap_or_default();
    let sit = r
        .section::<Situation>(Section::Situation)
        .unwrap_or_default();
    let hist = r.section::<History>(Section::History).unwrap_or_default();
    let disp = r
        .section::<Disposition>(Section::Disposition)
        .unwrap_or_default();
    let narrative = r
        .section::<Narrative>(Section::Narrative)
        .and_then(|n| n.text);

    let mut missing = vec![];
    if incident.dispatch_reason.is_none() {
        missing.push("incident.dispatch_reason");
    }
    if incident.response_mode.is_none() {
        missing.push("incident.response_mode");
    }
    if times.dispatched_ms.is_none() {
        missing.push("times.dispatched_ms");
    }
    if times.in_service_ms.is_none() {
        missing.push("times.in_service_ms");
    }
    let (Some(dispatch_reason), Some(response_mode), Some(notified), Some(in_service)) = (
        incident.dispatch_reason,
        incident.response_mode,
        times.dispatched_ms,
        times.in_service_ms,
    ) else {
        return Err(Incomplete { missing });
    };
    let role_of = |acct: &str| {
        x.people
            .iter()
            .find(|(a, _, _)| a == acct)
            .map(|(_, _, r)| r.as_str())
            .unwrap_or("")
    };

    let mut w = Xml {
        out: String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
        depth: 0,
    };
    w.out.push_str("<EMSDataSet xmlns=\"http://www.nemsis.org\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:schemaLocation=\"http://www.nemsis.org https://nemsis.org/media/nemsis_v3/release-3.5.1/XSDs/NEMSIS_XSDs/EMSDataSet_v3.xsd\">\n");
    w.depth = 1;
    w.open("Header");
    w.open("DemographicGroup");
    w.val("dAgency.01", &agency.agency_state_id);
    w.val("dAgency.02", &agency.agency_number);
    w.val("dAgency.04", &agency.state_code);
    w.close("DemographicGroup");
    w.indent();
    // NEMSIS wants a version 1-5 UUID; case ids are version 7. A stable one derived from the
    // appliance and case ids identifies this report across re-exports.
    let h = crate::crypto::sha256(format!("nemsis|{}|{}", x.appliance_id, x.case_id).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    let pcr = uuid::Builder::from_random_bytes(b).into_uuid();
    let _ = writeln!(w.out, "<PatientCareReport UUID=\"{pcr}\">");
    w.depth += 1;

    // eRecord.
    w.open("eRecord");
    w.val("eRecord.01", &x.case_id);
    w.open("eRecord.SoftwareApplicationGroup");
    w.val("eRecord.02", "HEMA3N");
    w.val("eRecord.03", "HEMA3N Edge");
    w.val("eRecord.04", env!("CARGO_PKG_VERSION"));
    w.close("eRecord.SoftwareApplicationGroup");
    w.close("eRecord");

    // eResponse.
    w.open("eResponse");
    w.open("eResponse.AgencyGroup");
    w.val("eResponse.01", &agency.agency_number);
    if let Some(n) = &agency.agency_name {
        w.val("eResponse.02", n);
    }
    w.close("eResponse.AgencyGroup");
    w.opt(
        "eResponse.03",
        incident.incident_number.as_ref(),
        NOT_RECORDED,
    );
    w.opt("eResponse.04", incident.run_number.as_ref(), NOT_RECORDED);
    w.open("eResponse.ServiceGroup");
    w.val("eResponse.05", "2205001");
    w.close("eResponse.ServiceGroup");
    w.val(
        "eResponse.07",
        agency.unit_level_code().expect("validated config"),
    );
    w.nvs(
        &[
            "eResponse.08",
            "eResponse.09",
            "eResponse.10",
            "eResponse.11",
            "eResponse.12",
        ],
        NOT_RECORDED,
    );
    let vehicle: String = agency
        .vehicle_number
        .clone()
        .unwrap_or_else(|| x.appliance_id.chars().take(25).collect());
    w.val("eResponse.13", &vehicle);
    w.val(
        "eResponse.14",
        incident.unit.as_deref().unwrap_or(vehicle.as_str()),
    );
    w.val("eResponse.23", response_mode.nemsis());
    w.nv("eResponse.24", NOT_RECORDED);
    w.close("eResponse");

    // eDispatch.
    w.open("eDispatch");
    w.val("eDispatch.01", dispatch_reason.nemsis());
    w.nv("eDispatch.02", NOT_RECORDED);
    w.close("eDispatch");

    // eCrew.
    let crew = incident.crew.clone().unwrap_or_default();
    if !crew.is_empty() {
        w.open("eCrew");
        for m in &crew {
            w.open("eCrew.CrewGroup");
            w.val("eCrew.01", &m.account);
            w.opt(
                "eCrew.02",
                levels(role_of(&m.account)).map(|l| l.1),
                NOT_RECORDED,
            );
            w.val("eCrew.03", m.role.nemsis());
            w.close("eCrew.CrewGroup");
        }
        w.close("eCrew");
    }

    // eTimes.
    w.open("eTimes");
    w.opt("eTimes.01", times.call_received_ms.map(dt), NOT_RECORDED);
    w.val("eTimes.03", dt(notified));
    w.opt("eTimes.05", times.en_route_ms.map(dt), NOT_RECORDED);
    let transported = matches!(disp.transport, Some(codes::TransportDisposition::ThisUnit));
    let arrived_nv = NOT_RECORDED;
    w.opt("eTimes.06", times.on_scene_ms.map(dt), arrived_nv);
    w.opt("eTimes.07", times.at_patient_ms.map(dt), arrived_nv);
    let tnv = if transported {
        NOT_RECORDED
    } else {
        NOT_APPLICABLE
    };
    w.opt("eTimes.09", times.left_scene_ms.map(dt), tnv);
    w.opt("eTimes.11", times.at_destination_ms.map(dt), tnv);
    w.opt("eTimes.12", times.transfer_of_care_ms.map(dt), tnv);
    w.val("eTimes.13", dt(in_service));
    w.close("eTimes");

    // ePatient.
    w.open("ePatient");
    let p = x.patient.clone().unwrap_or_default();
    if p.last_name.is_some() || p.first_name.is_some() {
        w.open("ePatient.PatientNameGroup");
        w.opt("ePatient.02", p.last_name.as_ref(), NOT_RECORDED);
        w.opt("ePatient.03", p.first_name.as_ref(), NOT_RECORDED);
        w.close("ePatient.PatientNameGroup");
    }
    if let Some(street) = p.address.as_ref().and_then(|a| a.street.as_ref()) {
        w.val("ePatient.05", street);
    }
    w.nv("ePatient.07", NOT_RECORDED);
    w.nv("ePatient.08", NOT_RECORDED);
    let zip = p.address.as_ref().and_then(|a| a.zip.clone());
    w.opt("ePatient.09", zip.as_ref(), NOT_RECORDED);
    w.nv("ePatient.14", NOT_RECORDED);
    let age = p
        .date_of_birth
        .as_deref()
        .and_then(|d| age_years(d, x.created_at_ms))
        .map(|a| a.floor() as u32)
        .or(p.estimated_age_years);
    w.open("ePatient.AgeGroup");
    match age {
        Some(a) if a >= 1 => {
            w.val("ePatient.15", a);
            w.val("ePatient.16", "2516009");
        }
        _ => {
            w.nv("ePatient.15", NOT_RECORDED);
            w.nv("ePatient.16", NOT_RECORDED);
        }
    }
    w.close("ePatient.AgeGroup");
    if let Some(d) = &p.date_of_birth {
        w.val("ePatient.17", d);
    }
    let sex = match p.sex {
        Some(Sex::Female) => Some("9919001"),
        Some(Sex::Male) => Some("9919003"),
        Some(Sex::Unknown | Sex::Other) => Some("9919005"),
        None => None,
    };
    w.opt("ePatient.25", sex, NOT_RECORDED);
    w.close("ePatient");

    // ePayment.
    w.open("ePayment");
    w.nv("ePayment.01", NOT_RECORDED);
    w.nv("ePayment.50", NOT_RECORDED);
    w.close("ePayment");

    // eScene.
    w.open("eScene");
    w.nv("eScene.01", NOT_RECORDED);
    let count = scene.patient_count.map(|n| match n {
        1 => "2707005",
        _ => "2707001",
    });
    w.opt("eScene.06", count, NOT_RECORDED);
    w.opt(
        "eScene.07",
        scene.mass_casualty.map(|m| if m { YES } else { NO }),
        NOT_RECORDED,
    );
    w.nv(
        "eScene.08",
        if scene.mass_casualty == Some(true) {
            NOT_RECORDED
        } else {
            NOT_APPLICABLE
        },
    );
    w.nv("eScene.09", NOT_RECORDED);
    if let (Some(lat), Some(lon)) = (scene.latitude, scene.longitude) {
        w.val("eScene.11", format!("{lat:.6},{lon:.6}"));
    }
    if let Some(a) = &scene.address {
        w.val("eScene.15", a);
    }
    w.nvs(&["eScene.18", "eScene.19", "eScene.21"], NOT_RECORDED);
    w.close("eScene");

    // eSituation.
    let primary = sit.primary_impression.as_ref();
    let primary_code = primary.and_then(|i| codes::impression(&i.code));
    w.open("eSituation");
    w.opt("eSituation.01", sit.symptom_onset_ms.map(dt), NOT_RECORDED);
    w.opt(
        "eSituation.02",
        sit.possible_injury
            .map(|i| if i { "9922005" } else { "9922001" }),
        NOT_RECORDED,
    );
    if let Some(cc) = &x.chief_complaint {
        w.open("eSituation.PatientComplaintGroup");
        w.val("eSituation.03", "2803001");
        w.val("eSituation.04", cc.chars().take(255).collect::<String>());
        w.close("eSituation.PatientComplaintGroup");
    }
    w.nv("eSituation.07", NOT_RECORDED);
    w.opt(
        "eSituation.08",
        primary_code.map(|i| i.organ_system),
        NOT_RECORDED,
    );
    w.nv("eSituation.09", NOT_RECORDED);
    w.nv("eSituation.10", NOT_RECORDED);
    w.opt("eSituation.11", primary.map(|i| &i.code), NOT_RECORDED);
    let secondary = sit.secondary_impressions.clone().unwrap_or_default();
    if secondary.is_empty() {
        w.nv("eSituation.12", NOT_RECORDED);
    }
    for s in &secondary {
        w.val("eSituation.12", &s.code);
    }
    w.opt("eSituation.13", acuity(x, "2813"), NOT_RECORDED);
    w.opt(
        "eSituation.18",
        sit.last_known_well_ms.map(dt),
        NOT_RECORDED,
    );
    w.nv("eSituation.20", NOT_APPLICABLE);
    w.close("eSituation");

    // eInjury.
    let injured = sit.possible_injury == Some(true) || primary_code.is_some_and(|i| i.injury);
    let inv = if injured {
        NOT_RECORDED
    } else {
        NOT_APPLICABLE
    };
    w.open("eInjury");
    w.nvs(&["eInjury.01", "eInjury.03", "eInjury.04"], inv);
    w.close("eInjury");

    // eArrest.
    arrest(&mut w, sit.cardiac_arrest);

    // eHistory.
    w.open("eHistory");
    w.nv("eHistory.01", NOT_RECORDED);
    if let Some(ad) = hist.advance_directive {
        w.val("eHistory.05", ad.nemsis());
    }
    if hist.no_known_allergies == Some(true) {
        w.indent();
        w.out
            .push_str("<eHistory.06 xsi:nil=\"true\" PN=\"8801013\"/>\n");
    }
    w.nv("eHistory.17", NOT_RECORDED);
    w.close("eHistory");

    // eNarrative.
    if let Some(n) = narrative {
        w.open("eNarrative");
        w.val("eNarrative.01", n.chars().take(10_000).collect::<String>());
        w.close("eNarrative");
    }

    // eVitals: 5-minute sets of the device and manual readings, and each assessment.
    w.open("eVitals");
    let sets = vital_sets(&x.readings, 5 * 60_000);
    let assessments = r.events::<Assessment>(EventKind::Assessment);
    if sets.is_empty() && assessments.is_empty() {
        vitals_group(&mut w, None, &[], None);
    }
    for (t, set) in &sets {
        vitals_group(&mut w, Some(*t), set, None);
    }
    for (_, a) in &assessments {
        vitals_group(&mut w, Some(a.at_ms), &[], Some(a));
    }
    w.close("eVitals");

    // eExam: skin and pupils of each assessment.
    let exams: Vec<&Assessment> = assessments
        .iter()
        .map(|(_, a)| a)
        .filter(|a| a.skin.is_some() || a.pupils.is_some())
        .collect();
    if !exams.is_empty() {
        w.open("eExam");
        for a in exams {
            w.open("eExam.AssessmentGroup");
            w.val("eExam.03", dt(a.at_ms));
            if let Some(s) = a.skin {
                w.val("eExam.04", s.nemsis());
            }
            if let Some(p) = a.pupils {
                w.open("eExam.EyeGroup");
                w.val("eExam.17", "3517001");
                w.val("eExam.18", p.nemsis());
                w.close("eExam.EyeGroup");
            }
            w.close("eExam.AssessmentGroup");
        }
        w.close("eExam");
    }

    // eProtocols.
    w.open("eProtocols");
    w.open("eProtocols.ProtocolGroup");
    w.nv("eProtocols.01", NOT_RECORDED);
    w.close("eProtocols.ProtocolGroup");
    w.close("eProtocols");

    // eMedications: medications given and oxygen (RxNorm 7806).
    w.open("eMedications");
    let meds = r.events::<MedicationGiven>(EventKind::Medication);
    let oxygen: Vec<_> = r
        .events::<Oxygen>(EventKind::Oxygen)
        .into_iter()
        .filter(|(_, o)| o.action != codes::OxygenAction::Stop)
        .collect();
    if meds.is_empty() && oxygen.is_empty() {
        w.open("eMedications.MedicationGroup");
        w.nvs(
            &["eMedications.01", "eMedications.02", "eMedications.03"],
            NOT_APPLICABLE,
        );
        w.nv("eMedications.04", NOT_APPLICABLE);
        w.open("eMedications.DosageGroup");
        w.nv("eMedications.05", NOT_APPLICABLE);
        w.nv("eMedications.06", NOT_APPLICABLE);
        w.close("eMedications.DosageGroup");
        w.nvs(
            &["eMedications.07", "eMedications.08", "eMedications.10"],
            NOT_APPLICABLE,
        );
        w.close("eMedications.MedicationGroup");
    }
    for (v, m) in &meds {
        let who = m.performer.as_deref().unwrap_or(&v.recorded_by);
        let code = (m.medication != codes::MedicationCode::Other).then(|| m.medication.nemsis());
        med_group(
            &mut w,
            (m.at_ms, code, m.route.map(|r| r.nemsis())),
            (m.dose, m.dose_unit.map(|u| u.nemsis())),
            m.response.map(|r| r.nemsis()),
            (who, role_of(who)),
        );
    }
    for (v, o) in &oxygen {
        med_group(
            &mut w,
            (o.at_ms, Some("7806"), o.device.map(|d| d.nemsis())),
            (o.flow_l_min, Some("3706035")),
            None,
            (&v.recorded_by, role_of(&v.recorded_by)),
        );
    }
    w.close("eMedications");

    // eProcedures.
    w.open("eProcedures");
    let procs = r.events::<Procedure>(EventKind::Procedure);
    if procs.is_empty() {
        w.open("eProcedures.ProcedureGroup");
        w.nvs(
            &[
                "eProcedures.01",
                "eProcedures.02",
                "eProcedures.03",
                "eProcedures.05",
                "eProcedures.06",
                "eProcedures.07",
                "eProcedures.08",
                "eProcedures.10",
            ],
            NOT_APPLICABLE,
        );
        w.close("eProcedures.ProcedureGroup");
    }
    for (v, pr) in &procs {
        let who = pr.performer.as_deref().unwrap_or(&v.recorded_by);
        w.open("eProcedures.ProcedureGroup");
        w.val("eProcedures.01", dt(pr.at_ms));
        w.val("eProcedures.02", NO);
        w.val("eProcedures.03", pr.procedure.nemsis());
        if let Some(s) = &pr.size {
            w.val("eProcedures.04", s);
        }
        w.val("eProcedures.05", pr.attempts);
        w.val("eProcedures.06", if pr.successful { YES } else { NO });
        w.nv("eProcedures.07", NOT_RECORDED);
        w.nv("eProcedures.08", NOT_RECORDED);
        w.val("eProcedures.09", who);
        w.opt(
            "eProcedures.10",
            levels(role_of(who)).map(|l| l.0),
            NOT_RECORDED,
        );
        w.close("eProcedures.ProcedureGroup");
    }
    w.close("eProcedures");

    disposition(&mut w, x, &disp);

    // eOutcome: hospital data, not known in the vehicle.
    w.open("eOutcome");
    w.nv("eOutcome.01", NOT_RECORDED);
    w.nv("eOutcome.02", NOT_RECORDED);
    w.open("eOutcome.EmergencyDepartmentProceduresGroup");
    w.nv("eOutcome.09", NOT_RECORDED);
    w.nv("eOutcome.19", NOT_RECORDED);
    w.close("eOutcome.EmergencyDepartmentProceduresGroup");
    w.nv("eOutcome.10", NOT_RECORDED);
    w.nv("eOutcome.11", NOT_RECORDED);
    w.open("eOutcome.HospitalProceduresGroup");
    w.nv("eOutcome.12", NOT_RECORDED);
    w.nv("eOutcome.20", NOT_RECORDED);
    w.close("eOutcome.HospitalProceduresGroup");
    w.nvs(&["eOutcome.13", "eOutcome.16", "eOutcome.18"], NOT_RECORDED);
    w.close("eOutcome");

    w.depth -= 1;
    w.indent();
    w.out.push_str("</PatientCareReport>\n");
    w.close("Header");
    w.out.push_str("</EMSDataSet>\n");
    Ok(w.out)
}
