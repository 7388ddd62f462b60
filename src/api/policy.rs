//! The security policy of the tablet API, in one leaf module (no axum, no IO): roles and their
//! permissions, what a break-glass grant adds, and the route table.
//!
//! [`ROUTES`] is the single source of truth for who may call what: the guard (`guard.rs`) looks
//! every request up in it (a route missing from it is denied to everybody), the router
//! (`routes.rs`) must serve exactly its rows, and the OpenAPI document is generated from it.

pub use crate::model::Role;

crate::model::named_enum! {
    /// Permissions a route can require. Their names are what the API shows
    /// (`GET /api/v1/auth/me`, the OpenAPI `x-access` note).
    pub enum Perm {
        /// Read demographics (patients, names in the case list).
        PatientRead = "PatientRead",
        /// Register and edit patients.
        PatientWrite = "PatientWrite",
        /// See the case list.
        CaseList = "CaseList",
        /// Read the clinical record (vitals, triage, medications, alarms, handoff).
        ClinicalRead = "ClinicalRead",
        /// Open cases, bind devices, enter vitals, close cases.
        ClinicalWrite = "ClinicalWrite",
        /// Medication orders.
        Medication = "Medication",
        /// Bound/unbound field devices.
        DeviceRead = "DeviceRead",
        /// Sync and outbox state (no PHI).
        SyncRead = "SyncRead",
        /// Read the audit trail.
        AuditReview = "AuditReview",
        /// Review break-glass uses.
        BreakGlassReview = "BreakGlassReview",
        /// Ask for break-glass access.
        BreakGlass = "BreakGlass",
        /// Manage accounts (no PHI).
        Admin = "Admin",
        /// List the accounts of one's territory.
        UserRead = "UserRead",
        /// Approve an account an admin created with a PHI-reading role.
        UserApprove = "UserApprove",
        /// The HIPAA self-check (settings and counts, no PHI).
        ComplianceRead = "ComplianceRead",
        /// Grant, list and revoke access to one record for a user of another territory.
        GrantManage = "GrantManage",
    }
}

/// Permissions of a role. Anything not listed is denied.
pub fn role_perms(role: Role) -> &'static [Perm] {
    use Perm::*;
    match role {
        Role::Paramedic => &[
            PatientRead,
            PatientWrite,
            CaseList,
            ClinicalRead,
            ClinicalWrite,
            Medication,
            DeviceRead,
            SyncRead,
            BreakGlass,
        ],
        Role::Emt => &[
            PatientRead,
            PatientWrite,
            CaseList,
            ClinicalRead,
            ClinicalWrite,
            DeviceRead,
            SyncRead,
            BreakGlass,
        ],
        Role::Staff => &[PatientRead, PatientWrite, CaseList, BreakGlass],
        Role::Supervisor => &[
            PatientRead,
            CaseList,
            ClinicalRead,
            SyncRead,
            AuditReview,
            BreakGlassReview,
            BreakGlass,
            UserRead,
            UserApprove,
            ComplianceRead,
            GrantManage,
        ],
        Role::Admin => &[Admin, UserRead, DeviceRead, SyncRead, ComplianceRead],
    }
}

/// What an active break-glass grant adds: reading (never writing) clinical data and records of
/// another territory.
pub const BREAK_GLASS_PERMS: [Perm; 3] = [Perm::PatientRead, Perm::CaseList, Perm::ClinicalRead];

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No login (login itself, health, metrics, OpenAPI, the UI).
    Public,
    /// Any logged-in user.
    Authenticated,
    /// Users whose role (or break-glass grant) has the permission.
    Perm(Perm),
}

/// One row of the route table.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    /// Reads or writes PHI (every call is audited).
    pub phi: bool,
    pub summary: &'static str,
    /// Request body schema name in the OpenAPI document, if any.
    pub body: Option<&'static str>,
    /// What it answers on success (status and schema in the OpenAPI document).
    pub reply: Reply,
}

/// What a route answers on success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `200` with a JSON body of this schema.
    Json(&'static str),
    /// `201` with a JSON body of this schema.
    Created(&'static str),
    /// `204`, no body.
    NoContent,
    /// `200` Prometheus text.
    Text,
    /// `200` server-sent events.
    EventStream,
    /// `200` an XML document (the NEMSIS export).
    Xml,
    /// `200` a PDF document (the handoff).
    Pdf,
    /// `200` an attached file or thumbnail (JPEG, PNG, PDF or DICOM, by its bytes).
    File,
    /// `200` an accounting of disclosures: a FHIR R4 Bundle (`application/fhir+json`) or CSV.
    Accounting,
}

pub const BREAK_GLASS_PATH: &str = "/api/v1/auth/break-glass";

const fn r(
    method: &'static str,
    path: &'static str,
    access: Access,
    phi: bool,
    summary: &'static str,
    body: Option<&'static str>,
    reply: Reply,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
        phi,
        summary,
        body,
        reply,
    }
}

/// The route-table row of `method path`.
pub fn route(method: &str, path: &str) -> Option<&'static RouteSpec> {
    ROUTES.iter().find(|r| r.path == path && r.method == method)
}

use Access::{Authenticated, Public};
use Perm::*;
use Reply::{Created, EventStream, Json, NoContent, Text};

/// Every API route.
pub const ROUTES: &[RouteSpec] = &[
    r(
        "GET",
        "/healthz",
        Public,
        false,
        "Liveness and component state",
        None,
        Json("Health"),
    ),
    r(
        "GET",
        "/metrics",
        Public,
        false,
        "Prometheus metrics (no PHI)",
        None,
        Text,
    ),
    r(
        "GET",
        "/api/v1/openapi.json",
        Public,
        false,
        "This document",
        None,
        Json("OpenApi"),
    ),
    r(
        "POST",
        "/api/v1/auth/login",
        Public,
        false,
        "Log in with a personal user id and PIN/password; returns a bearer token",
        Some("Login"),
        Json("Session"),
    ),
    r(
        "POST",
        "/api/v1/auth/logout",
        Authenticated,
        false,
        "End this session",
        None,
        NoContent,
    ),
    r(
        "GET",
        "/api/v1/auth/me",
        Authenticated,
        false,
        "The caller, territory, permissions and break-glass state",
        None,
        Json("Me"),
    ),
    r(
        "POST",
        BREAK_GLASS_PATH,
        Access::Perm(BreakGlass),
        false,
        "Break-glass: re-authenticate with a reason for time-boxed wider read access",
        Some("BreakGlass"),
        Created("BreakGlassGrant"),
    ),
    r(
        "GET",
        "/api/v1/patients",
        Access::Perm(PatientRead),
        true,
        "Search patients by last_name, date_of_birth, mrn (blind indexes)",
        None,
        Json("PatientList"),
    ),
    r(
        "POST",
        "/api/v1/patients",
        Access::Perm(PatientWrite),
        true,
        "Register a patient (partial data allowed)",
        Some("Patient"),
        Created("CreatedId"),
    ),
    r(
        "GET",
        "/api/v1/patients/{id}",
        Access::Perm(PatientRead),
        true,
        "Read a patient",
        None,
        Json("StoredPatient"),
    ),
    r(
        "PUT",
        "/api/v1/patients/{id}",
        Access::Perm(PatientWrite),
        true,
        "Replace a patient's demographics",
        Some("Patient"),
        NoContent,
    ),
    r(
        "GET",
        "/api/v1/cases",
        Access::Perm(CaseList),
        true,
        "Cases of the territory (names for demographics roles, ESI for clinical roles)",
        None,
        Json("CaseList"),
    ),
    r(
        "POST",
        "/api/v1/cases",
        Access::Perm(ClinicalWrite),
        true,
        "Open a case",
        Some("CaseCreate"),
        Created("CreatedId"),
    ),
    r(
        "GET",
        "/api/v1/cases/{id}",
        Access::Perm(ClinicalRead),
        true,
        "The case: patient, devices, alarms, triage, care record, vitals, sync state",
        None,
        Json("Case"),
    ),
    r(
        "PATCH",
        "/api/v1/cases/{id}",
        Access::Perm(ClinicalWrite),
        true,
        "Merge-patch the case details (If-Match: the case's ETag)",
        Some("CaseDetailsPatch"),
        Json("Version"),
    ),
    r(
        "GET",
        "/api/v1/record/codes",
        Access::Perm(ClinicalRead),
        false,
        "The record's quick-pick lists (labels and codes)",
        None,
        Json("RecordCodes"),
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/record",
        Access::Perm(ClinicalRead),
        true,
        "The care record: every entry's current version and its history",
        None,
        Json("Record"),
    ),
    r(
        "PATCH",
        "/api/v1/cases/{id}/record/incident",
        Access::Perm(ClinicalWrite),
        true,
        "Merge-patch the record's incident numbers, unit and crew",
        Some("IncidentPatch"),
        Json("EntryWritten"),
    ),
    r(
        "PATCH",
        "/api/v1/cases/{id}/record/times",
        Access::Perm(ClinicalWrite),
        true,
        "Merge-patch the record's call times (NEMSIS eTimes)",
        Some("TimesPatch"),
        Json("EntryWritten"),
    ),
    r(
        "PATCH",
        "/api/v1/cases/{id}/record/scene",
        Access::Perm(ClinicalWrite),
        true,
        "Merge-patch the record's scene location and patients",
        Some("ScenePatch"),
        Json("EntryWritten"),
    ),
    r(
        "PATCH",
        "/api/v1/cases/{id}/record/situation",
        Access::Perm(ClinicalWrite),
        true,
        "Merge-patch the record's onset, impressions, possible injury",
        Some("SituationPatch"),
        Json("EntryWritten"),
    ),
    r(
        "PATCH",
        "/api/v1/cases/{id}/record/history",
        Access::Perm(ClinicalWrite),
        true,
        "Merge-patch the record's allergies, history, medications, advance directive",
        Some("HistoryPatch"),
        Json("EntryWritten"),
    ),
    r(
        "PATCH",
        "/api/v1/cases/{id}/record/disposition",
        Access::Perm(ClinicalWrite),
        true,
        "Merge-patch the record's disposition, destination and transfer of care",
        Some("DispositionPatch"),
        Json("EntryWritten"),
    ),
    r(
        "PATCH",
        "/api/v1/cases/{id}/record/narrative",
        Access::Perm(ClinicalWrite),
        true,
        "Merge-patch the record's the narrative",
        Some("NarrativePatch"),
        Json("EntryWritten"),
    ),
    r(
        "PATCH",
        "/api/v1/cases/{id}/record/spo2_scale",
        Access::Perm(Medication),
        true,
        "Merge-patch the record's NEWS2 SpO2 scale 2 (a paramedic's decision, with a reason)",
        Some("Spo2ScalePatch"),
        Json("EntryWritten"),
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/record/oxygen",
        Access::Perm(ClinicalWrite),
        true,
        "Record supplemental oxygen started, changed or stopped",
        Some("OxygenEvent"),
        Created("EntryWritten"),
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/record/procedure",
        Access::Perm(ClinicalWrite),
        true,
        "Record a procedure or intervention",
        Some("ProcedureEvent"),
        Created("EntryWritten"),
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/record/medication",
        Access::Perm(Medication),
        true,
        "Record a medication given",
        Some("MedicationEvent"),
        Created("EntryWritten"),
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/record/assessment",
        Access::Perm(ClinicalWrite),
        true,
        "Record an assessment (GCS, pupils, skin, BE-FAST, pain)",
        Some("AssessmentEvent"),
        Created("EntryWritten"),
    ),
    r(
        "PUT",
        "/api/v1/cases/{id}/record/entries/{entry_id}",
        Access::Perm(ClinicalWrite),
        true,
        "Correct an event (If-Match required; medication entries need a paramedic)",
        Some("EventCorrection"),
        Json("EntryWritten"),
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/record/entries/{entry_id}/entered-in-error",
        Access::Perm(ClinicalWrite),
        true,
        "Mark an entry entered-in-error, with a reason (kept in the history)",
        Some("EnteredInError"),
        Json("EntryWritten"),
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/vitals/{reading_id}/entered-in-error",
        Access::Perm(ClinicalWrite),
        true,
        "Mark a vital-sign reading entered-in-error, with a reason",
        Some("EnteredInError"),
        NoContent,
    ),
    r(
        "PATCH",
        "/api/v1/patients/{id}",
        Access::Perm(PatientWrite),
        true,
        "Merge-patch demographics (If-Match: the patient's ETag)",
        Some("PatientPatch"),
        Json("Version"),
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/nemsis",
        Access::Perm(ClinicalRead),
        true,
        "The case as a NEMSIS v3.5.1 EMSDataSet document (audited as a disclosure); 422 lists what the record lacks",
        None,
        Reply::Xml,
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/drafts",
        Access::Perm(ClinicalWrite),
        true,
        "Your unsaved forms of the case (kept across an idle logoff)",
        None,
        Json("Drafts"),
    ),
    r(
        "PUT",
        "/api/v1/cases/{id}/drafts/{form}",
        Access::Perm(ClinicalWrite),
        true,
        "Keep an unsaved form (sealed, at most 16 KiB) until it is submitted or dropped",
        Some("Draft"),
        NoContent,
    ),
    r(
        "DELETE",
        "/api/v1/cases/{id}/drafts/{form}",
        Access::Perm(ClinicalWrite),
        true,
        "Drop an unsaved form",
        None,
        NoContent,
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/devices",
        Access::Perm(ClinicalWrite),
        true,
        "Bind a field device to the case",
        Some("Bind"),
        Json("Bound"),
    ),
    r(
        "DELETE",
        "/api/v1/cases/{id}/devices/{device_id}",
        Access::Perm(ClinicalWrite),
        true,
        "Unbind a device",
        None,
        NoContent,
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/vitals",
        Access::Perm(ClinicalRead),
        true,
        "Vitals history, oldest first",
        None,
        Json("ReadingList"),
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/vitals",
        Access::Perm(ClinicalWrite),
        true,
        "Enter vitals by hand",
        Some("ManualVitals"),
        Created("ReadingIds"),
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/triage",
        Access::Perm(ClinicalRead),
        true,
        "Triage results, newest first, with reasons",
        None,
        Json("TriageList"),
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/stream",
        Access::Perm(ClinicalRead),
        true,
        "Live events (SSE): vitals, triage, alarm, case",
        None,
        EventStream,
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/handoff",
        Access::Perm(ClinicalRead),
        true,
        "Handoff for the receiving hospital: MIST and SBAR (the suggested one named), times, vitals trend, interventions, allergies, triage and its reasons",
        None,
        Json("Handoff"),
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/handoff/pdf",
        Access::Perm(ClinicalRead),
        true,
        "The handoff document as a PDF (`?format=mist|sbar`, else the suggested one); audited as a disclosure",
        None,
        Reply::Pdf,
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/transfer",
        Access::Perm(ClinicalWrite),
        true,
        "Record the transfer of care (receiving clinician, time); the case becomes handed_off",
        Some("Transfer"),
        Json("Transferred"),
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/attachments",
        Access::Perm(ClinicalRead),
        true,
        "Attachments of the case (photos, ECG strips, signed forms, ultrasound): kind, caption, size, type, SHA-256, what was stripped, sync state",
        None,
        Json("AttachmentList"),
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/attachments",
        Access::Perm(ClinicalWrite),
        true,
        "Announce an attachment (kind, caption, file name, size); then send its bytes with PATCH …/content",
        Some("AttachmentCreate"),
        Created("Attachment"),
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/attachments/{aid}",
        Access::Perm(ClinicalRead),
        true,
        "One attachment; `received` is where an interrupted upload resumes",
        None,
        Json("Attachment"),
    ),
    r(
        "PATCH",
        "/api/v1/cases/{id}/attachments/{aid}/content",
        Access::Perm(ClinicalWrite),
        true,
        "Upload the next piece at `Upload-Offset` (raw bytes, committed before the answer); the last piece stores the file: type recognised by its bytes, photo metadata stripped, DICOM PHI split off",
        Some("AttachmentPiece"),
        Json("Attachment"),
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/attachments/{aid}/content",
        Access::Perm(ClinicalRead),
        true,
        "The attached file (metadata stripped; a DICOM object re-joined with its PHI); audited as a view",
        None,
        Reply::File,
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/attachments/{aid}/thumbnail",
        Access::Perm(ClinicalRead),
        true,
        "A small JPEG of a photo attachment; audited as a view",
        None,
        Reply::File,
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/close",
        Access::Perm(ClinicalWrite),
        true,
        "Close the case; it is sealed and queued for the cloud",
        None,
        Json("Closed"),
    ),
    r(
        "GET",
        "/api/v1/devices",
        Access::Perm(DeviceRead),
        false,
        "Field devices, presence and binding",
        None,
        Json("DeviceList"),
    ),
    r(
        "GET",
        "/api/v1/sync",
        Access::Perm(SyncRead),
        false,
        "Cloud link state and outbox counts",
        None,
        Json("SyncStatus"),
    ),
    r(
        "GET",
        "/api/v1/audit",
        Access::Perm(AuditReview),
        false,
        "Audit trail of the caller's territory, newest first (?patient=&case=&user=&since=&until=&before=seq&limit=n; times as a UTC date, timestamp or Unix ms)",
        None,
        Json("AuditList"),
    ),
    r(
        "GET",
        "/api/v1/patients/{id}/disclosures",
        Access::Perm(AuditReview),
        false,
        "A patient's accounting of disclosures: every read and disclosure of the patient's data in the caller's territory, as a FHIR R4 Bundle of AuditEvents or CSV (?format=csv); audited",
        None,
        Reply::Accounting,
    ),
    r(
        "GET",
        "/api/v1/break-glass",
        Access::Perm(BreakGlassReview),
        false,
        "Break-glass uses (?pending=true for the review queue)",
        None,
        Json("BreakGlassUses"),
    ),
    r(
        "POST",
        "/api/v1/break-glass/{id}/review",
        Access::Perm(BreakGlassReview),
        false,
        "Close a break-glass review",
        Some("Review"),
        NoContent,
    ),
    r(
        "GET",
        "/api/v1/grants",
        Access::Perm(GrantManage),
        false,
        "Access grants of the caller's territory, newest first, with reasons and use counts (?active=true: unexpired, unrevoked)",
        None,
        Json("AccessGrants"),
    ),
    r(
        "POST",
        "/api/v1/grants",
        Access::Perm(GrantManage),
        false,
        "Open one case or patient of the caller's territory to a user of another territory, read or read/write, for a reason, until an expiry (audited)",
        Some("GrantBody"),
        Created("GrantCreated"),
    ),
    r(
        "POST",
        "/api/v1/grants/{id}/revoke",
        Access::Perm(GrantManage),
        false,
        "Revoke an access grant at once (audited)",
        None,
        NoContent,
    ),
    r(
        "GET",
        "/api/v1/compliance",
        Access::Perm(ComplianceRead),
        false,
        "The HIPAA self-check: one item per safeguard with its evidence (re-run every 10 min)",
        None,
        Json("ComplianceReport"),
    ),
    r(
        "GET",
        "/api/v1/users",
        Access::Perm(UserRead),
        false,
        "Accounts of the caller's territory",
        None,
        Json("UserList"),
    ),
    r(
        "POST",
        "/api/v1/users",
        Access::Perm(Admin),
        false,
        "Add an account (roles that read PHI wait for a supervisor's approval)",
        Some("UserCreate"),
        Created("CreatedId"),
    ),
    r(
        "POST",
        "/api/v1/users/{id}/disable",
        Access::Perm(Admin),
        false,
        "Disable an account and end its sessions",
        None,
        NoContent,
    ),
    r(
        "POST",
        "/api/v1/users/{id}/approve",
        Access::Perm(UserApprove),
        false,
        "Approve an account waiting for a supervisor (created by an admin)",
        None,
        NoContent,
    ),
];

/// The methods the route table serves on `path` (empty for paths it does not list).
pub fn methods_of(path: &str) -> Vec<&'static str> {
    ROUTES
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.method)
        .collect()
}

/// The access rule of a route, or `None` when it is not in the table (denied).
pub fn route_access(method: &str, path: &str) -> Option<Access> {
    if !path.starts_with("/api/") && path != "/healthz" && path != "/metrics" {
        // The UI's static assets.
        return Some(Access::Public);
    }
    route(method, path).map(|r| r.access)
}

/// Whether a role, with or without an active break-glass grant, holds a permission.
/// Whether a role reads PHI without break-glass (accounts with such roles that an admin
/// creates wait for a supervisor's approval).
pub fn reads_phi(role: Role) -> bool {
    role_perms(role)
        .iter()
        .any(|p| matches!(p, Perm::PatientRead | Perm::ClinicalRead))
}

pub fn allows(role: Role, break_glass: bool, p: Perm) -> bool {
    role_perms(role).contains(&p) || (break_glass && BREAK_GLASS_PERMS.contains(&p))
}

/// The permission names a caller holds, sorted (what `GET /api/v1/auth/me` shows).
pub fn permission_names(role: Role, break_glass: bool) -> Vec<&'static str> {
    let mut names: Vec<&str> = Perm::ALL
        .iter()
        .filter(|p| allows(role, break_glass, **p))
        .map(|p| p.as_str())
        .collect();
    names.sort_unstable();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permission_a_route_needs_is_held_by_some_role() {
        for r in ROUTES {
            if let Access::Perm(p) = r.access {
                assert!(
                    Role::ALL.iter().any(|role| role_perms(*role).contains(&p)),
                    "{} {} needs {} which no role holds",
                    r.method,
                    r.path,
                    p.as_str()
                );
            }
        }
    }

    #[test]
    fn routes_are_unique_and_unknown_routes_are_denied() {
        for (i, a) in ROUTES.iter().enumerate() {
            assert!(
                ROUTES[i + 1..]
                    .iter()
                    .all(|b| (b.method, b.path) != (a.method, a.path)),
                "{} {} listed twice",
                a.method,
                a.path
            );
        }
        assert_eq!(route_access("GET", "/api/v1/nothing"), None);
        assert_eq!(route_access("DELETE", "/api/v1/patients"), None);
        assert_eq!(route_access("GET", "/index.html"), Some(Access::Public));
    }

    #[test]
    fn break_glass_adds_reading_only() {
        for p in BREAK_GLASS_PERMS {
            assert!(matches!(
                p,
                Perm::PatientRead | Perm::CaseList | Perm::ClinicalRead
            ));
        }
        assert!(!allows(Role::Staff, true, Perm::ClinicalWrite));
        assert!(allows(Role::Staff, true, Perm::ClinicalRead));
        assert!(!allows(Role::Staff, false, Perm::ClinicalRead));
        assert!(!allows(Role::Admin, true, Perm::Medication));
    }

    #[test]
    fn permission_names_are_the_variant_names() {
        for p in Perm::ALL {
            assert_eq!(p.as_str(), format!("{p:?}"));
        }
    }
}
