//! Key and certificate lifecycle: which territory keys are past `keys.rotate_after_days` and
//! which TLS certificates (the tablet API's, the cloud client's) expire within
//! `keys.certificate_warn_days` — for `check`, `/metrics` and the `key_rotation_due` and
//! `certificate_expiring` alarms the daemon keeps (raised when due, cleared when resolved).

use std::path::PathBuf;

use crate::config::Config;
use crate::storage::CurrentKeyVersion;

const DAY_MS: i64 = 86_400_000;

/// The current (highest, not retired) version of one territory's key and its age.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAge {
    pub territory: String,
    pub version: u32,
    pub created_at_ms: i64,
    pub age_days: i64,
    pub due: bool,
}

/// One configured certificate and when it expires.
#[derive(Debug, Clone)]
pub struct CertExpiry {
    /// `api` (the tablet's HTTPS) or `cloud_client` (mTLS to the cloud broker).
    pub name: &'static str,
    pub path: PathBuf,
    /// `notAfter` in ms and whole days left (negative once expired), or why the certificate
    /// could not be read.
    pub expiry: Result<(i64, i64), String>,
    /// Expired, unreadable, or within the warning window.
    pub warn: bool,
}

/// Territory key ages against `keys.rotate_after_days`.
pub fn key_ages(cfg: &Config, current: &[CurrentKeyVersion], now: i64) -> Vec<KeyAge> {
    current
        .iter()
        .map(|k| {
            let age_days = (now - k.created_at_ms).max(0) / DAY_MS;
            KeyAge {
                territory: k.territory.clone(),
                version: k.version,
                created_at_ms: k.created_at_ms,
                age_days,
                due: age_days >= i64::from(cfg.keys.rotate_after_days),
            }
        })
        .collect()
}

/// The certificates this configuration uses and their expiry.
pub fn certificates(cfg: &Config, now: i64) -> Vec<CertExpiry> {
    let mut paths: Vec<(&'static str, PathBuf)> = Vec::new();
    if cfg.api.enabled {
        paths.push(("api", cfg.api_cert_path()));
    }
    if let Some(p) = &cfg.sync.client_cert {
        paths.push(("cloud_client", p.clone()));
    }
    paths
        .into_iter()
        .filter(|(_, p)| p.exists())
        .map(|(name, path)| {
            let expiry = crate::tls::certificate_not_after_ms(&path)
                .map(|t| (t, (t - now).div_euclid(DAY_MS)))
                .map_err(|e| e.to_string());
            let warn = !expiry
                .as_ref()
                .is_ok_and(|(_, d)| *d >= i64::from(cfg.keys.certificate_warn_days));
            CertExpiry {
                name,
                path,
                expiry,
                warn,
            }
        })
        .collect()
}

/// The detail of the `key_rotation_due` alarm (absent: nothing due).
pub fn keys_alarm(ages: &[KeyAge]) -> Option<String> {
    let due: Vec<String> = ages
        .iter()
        .filter(|k| k.due)
        .map(|k| format!("{} v{} is {} days old", k.territory, k.version, k.age_days))
        .collect();
    (!due.is_empty()).then(|| {
        format!(
            "territory keys due for rotation: {} (hema3n-rotate-keys.timer rotates them daily while keys.auto_rotate is on; by hand: hema3n-edge keys rotate --territory T)",
            due.join("; ")
        )
    })
}

/// The detail of the `certificate_expiring` alarm (absent: none expiring).
pub fn certificates_alarm(certs: &[CertExpiry]) -> Option<String> {
    let due: Vec<String> = certs
        .iter()
        .filter(|c| c.warn)
        .map(|c| match &c.expiry {
            Ok((_, d)) if *d < 0 => format!("{} certificate expired {} days ago", c.name, -d),
            Ok((_, d)) => format!("{} certificate expires in {d} days", c.name),
            Err(e) => format!("{} certificate unreadable: {e}", c.name),
        })
        .collect();
    (!due.is_empty()).then(|| due.join("; "))
}

/// Raises or clears both alarms from the current state (the checkpointer runs this at start and
/// every ten minutes).
pub fn update_alarms(cfg: &Config, db: &mut crate::storage::Db) -> crate::storage::Result<()> {
    use crate::model::AlarmKind;
    let now = crate::model::now_ms();
    let keys = keys_alarm(&key_ages(cfg, &db.current_key_versions()?, now));
    db.set_appliance_alarm(
        AlarmKind::KeyRotationDue,
        keys.is_some(),
        keys.as_deref().unwrap_or(""),
    )?;
    let certs = certificates_alarm(&certificates(cfg, now));
    db.set_appliance_alarm(
        AlarmKind::CertificateExpiring,
        certs.is_some(),
        certs.as_deref().unwrap_or(""),
    )?;
    Ok(())
}
