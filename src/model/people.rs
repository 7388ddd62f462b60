//! Who acts and how it is audited: [`Actor`], [`Role`] (and the account-field check),
//! [`Outcome`], [`AuditEvent`].

use std::sync::Arc;

use super::is_valid_ident;

/// Who performed an action, as recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Personal user id, or `system` / `cli:<unix user>` for the appliance itself.
    pub id: String,
    /// Role name (`paramedic`, `emt`, `staff`, `supervisor`, `admin`, `system`).
    pub role: String,
    /// Where and why an API request acts (absent for the appliance itself and the CLI).
    pub via: Option<Arc<AccessContext>>,
}

/// Where an API request came from and why it acts: every audit entry it causes says so
/// (`model::access` turns it into the entry's `access` and `purpose` details).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessContext {
    /// The client's address.
    pub address: String,
    /// The session: the first 16 hex digits of the token's SHA-256 (never the token).
    pub session: String,
    /// The tablet's `User-Agent`, shortened to 160 characters.
    pub agent: Option<String>,
    /// The break-glass grant the request rests on.
    pub break_glass: Option<i64>,
}

impl Actor {
    pub fn new(id: impl Into<String>, role: impl Into<String>) -> Self {
        Actor {
            id: id.into(),
            role: role.into(),
            via: None,
        }
    }
    pub fn system() -> Self {
        Actor::new("system", "system")
    }
    /// The local administrator running a CLI command.
    pub fn cli() -> Self {
        let user = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "unknown".into());
        Actor::new(format!("cli:{user}"), "admin")
    }
}

named_enum! {
    /// The role of a personal account (SYSTEM.md §3). What each role may do is the API's policy
    /// (`api::policy`); the database holds the same closed set (a `CHECK` constraint).
    pub enum Role {
        /// Full clinical record, medications.
        Paramedic = "paramedic",
        /// Clinical record, no medication orders.
        Emt = "emt",
        /// Demographics only.
        Staff = "staff",
        /// Reads, audit review, break-glass review.
        Supervisor = "supervisor",
        /// The appliance and its accounts, no PHI.
        Admin = "admin",
    }
}

/// Checks a new account's fields (the API's `POST /api/v1/users` and the CLI's `users add`)
/// and returns its role.
pub fn validate_user(
    id: &str,
    display_name: &str,
    role: &str,
    territory: &str,
) -> Result<Role, String> {
    if !is_valid_ident(id) || !is_valid_ident(territory) {
        return Err("user id and territory must match [A-Za-z0-9._-]{1,64}".into());
    }
    if display_name.trim().is_empty() || display_name.len() > 100 {
        return Err("display name must have 1 to 100 bytes".into());
    }
    Role::parse(role).ok_or_else(|| {
        let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("role must be one of {}", names.join(", "))
    })
}

/// Outcome of an audited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Denied,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
        }
    }
}

/// One audit event before it is chained. `details` must never contain PHI: ids and counts only.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub actor: Actor,
    /// Dotted verb, e.g. `patient.create`, `patient.read`, `login.failure`, `case.erase`.
    pub action: String,
    /// `type/id`, e.g. `patient/0190…`.
    pub resource: String,
    pub outcome: Outcome,
    pub territory: Option<String>,
    pub details: serde_json::Value,
}

impl AuditEvent {
    pub fn new(actor: &Actor, action: &str, resource: impl Into<String>, outcome: Outcome) -> Self {
        AuditEvent {
            actor: actor.clone(),
            action: action.into(),
            resource: resource.into(),
            outcome,
            territory: None,
            details: serde_json::Value::Null,
        }
    }
    pub fn territory(mut self, t: &str) -> Self {
        self.territory = Some(t.into());
        self
    }
    pub fn details(mut self, d: serde_json::Value) -> Self {
        self.details = d;
        self
    }
}
