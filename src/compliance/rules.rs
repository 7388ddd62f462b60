//! The rules of the self-check: one function per item, each turning [`Facts`] into an [`Item`]
//! with its evidence and verdict. Pure (no IO, no clock): every threshold is here.

use super::{Facts, Item, Status};
use crate::config::Config;
use crate::model::iso8601_ms;

pub(super) const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Idle logoff at or under this passes (NIST SP 800-63B AAL2 asks for 30 min at most; clinical
/// tablets commonly 10-15 min); up to [`IDLE_WARN_SECS`] warns; longer fails.
pub const IDLE_PASS_SECS: u64 = 15 * 60;
pub const IDLE_WARN_SECS: u64 = 30 * 60;
/// Absolute session lifetime above this warns (one shift).
pub const LIFETIME_WARN_SECS: u64 = 12 * 3600;
/// A break-glass time box longer than this warns.
pub const BREAK_GLASS_WARN_MINUTES: u64 = 240;
/// Break-glass grants waiting longer than this for their review warn.
pub const BREAK_GLASS_REVIEW_DAYS: i64 = 7;
/// Account ids that name a role or a vehicle rather than a person (a shared login fails).
const SHARED_IDS: &str =
    "admin administrator ambulance crew default demo guest medic root shared tablet test user";

/// Collects an item's evidence and its worst finding.
struct Builder {
    status: Status,
    evidence: Vec<String>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            status: Status::Pass,
            evidence: Vec::new(),
        }
    }
    fn note(&mut self, s: impl Into<String>) {
        self.evidence.push(s.into());
    }
    fn warn(&mut self, s: impl Into<String>) {
        self.status = self.status.max(Status::Warn);
        self.evidence.push(format!("WARN: {}", s.into()));
    }
    fn fail(&mut self, s: impl Into<String>) {
        self.status = Status::Fail;
        self.evidence.push(format!("FAIL: {}", s.into()));
    }
    fn item(self, id: &'static str, safeguard: &'static str, title: &'static str) -> Item {
        Item {
            id,
            safeguard,
            title,
            status: self.status,
            evidence: self.evidence,
        }
    }
}

fn ago(now: i64, t: i64) -> String {
    let h = (now - t).max(0) / HOUR_MS;
    if h >= 48 {
        format!("{} days ago", h / 24)
    } else {
        format!("{h} h ago")
    }
}

pub(super) fn unique_ids(f: &Facts) -> Item {
    let mut b = Builder::new();
    let users = &f.db.enabled_users;
    b.note(format!(
        "{} enabled accounts; every API action and audit entry names the signed-in account; no PHI route is anonymous",
        users.len()
    ));
    let shared: Vec<&str> = users
        .iter()
        .filter(|u| {
            let u = u.to_ascii_lowercase();
            SHARED_IDS.split(' ').any(|s| s == u)
        })
        .map(String::as_str)
        .collect();
    if !shared.is_empty() {
        b.fail(format!(
            "accounts named for a role or vehicle, not a person: {} (hema3n-edge users disable ID)",
            shared.join(", ")
        ));
    }
    if users.is_empty() {
        b.warn("no enabled account: nobody can sign in on the tablet (hema3n-edge users add)");
    }
    b.item(
        "unique_user_identification",
        "164.312(a)(2)(i)",
        "Unique user identification",
    )
}

pub(super) fn emergency_access(cfg: &Config, f: &Facts, now: i64) -> Item {
    let mut b = Builder::new();
    let m = cfg.api.break_glass_minutes;
    if m == 0 {
        b.fail(
            "break-glass is disabled (api.break_glass_minutes = 0): no emergency access procedure",
        );
    } else {
        b.note(format!(
            "break-glass: a stated reason, time-boxed to {m} min (api.break_glass_minutes), audited, reviewed by a supervisor"
        ));
        if m > BREAK_GLASS_WARN_MINUTES {
            b.warn(format!(
                "a {m} min break-glass time box is longer than {BREAK_GLASS_WARN_MINUTES} min"
            ));
        }
    }
    b.note(format!(
        "{} break-glass grants awaiting review",
        f.db.break_glass_pending
    ));
    if let Some(t) = f.db.break_glass_oldest_pending_ms
        && now - t > BREAK_GLASS_REVIEW_DAYS * DAY_MS
    {
        b.warn(format!(
            "the oldest unreviewed break-glass grant began {} (review within {BREAK_GLASS_REVIEW_DAYS} days)",
            ago(now, t)
        ));
    }
    b.item(
        "emergency_access",
        "164.312(a)(2)(ii)",
        "Emergency access procedure",
    )
}

pub(super) fn automatic_logoff(cfg: &Config) -> Item {
    let mut b = Builder::new();
    let (idle, life) = (cfg.api.idle_timeout_secs, cfg.api.session_lifetime_secs);
    b.note(format!(
        "idle logoff after {idle} s (api.idle_timeout_secs), sessions end after {life} s (api.session_lifetime_secs), enforced by the server"
    ));
    if idle > IDLE_WARN_SECS {
        b.fail(format!(
            "idle logoff {idle} s is longer than {IDLE_WARN_SECS} s"
        ));
    } else if idle > IDLE_PASS_SECS {
        b.warn(format!(
            "idle logoff {idle} s is longer than {IDLE_PASS_SECS} s"
        ));
    }
    if life > LIFETIME_WARN_SECS {
        b.warn(format!(
            "session lifetime {life} s is longer than a {LIFETIME_WARN_SECS} s shift"
        ));
    }
    b.item("automatic_logoff", "164.312(a)(2)(iii)", "Automatic logoff")
}

pub(super) fn encryption(cfg: &Config, f: &Facts) -> Item {
    let mut b = Builder::new();
    if f.plaintext_header {
        b.fail("the database file is plain SQLite, not encrypted");
    } else {
        b.note(format!(
            "database encrypted by SQLCipher {} (AES-256, page HMAC)",
            f.cipher_version
        ));
    }
    b.note("PHI fields sealed (AES-256-GCM) under per-patient and per-case data keys, wrapped by territory keys");
    if f.keys_sealed {
        b.note("keys are encrypted credentials bound to this vehicle (systemd-creds)");
    } else {
        b.note(format!(
            "keys are 0600 files in {} (development, or a vehicle before its first boot)",
            cfg.keys.dir.display()
        ));
    }
    let live: Vec<String> = f
        .key_versions
        .iter()
        .filter(|k| !k.retired)
        .map(|k| format!("{}/v{}", k.territory, k.version))
        .collect();
    b.note(format!(
        "territory key versions in use: {}",
        live.join(", ")
    ));
    for k in f
        .key_versions
        .iter()
        .filter(|k| !k.loaded && k.data_keys > 0)
    {
        b.fail(format!(
            "territory key {}/v{} is missing but wraps {} data keys: their PHI cannot be decrypted",
            k.territory, k.version, k.data_keys
        ));
    }
    b.item(
        "encryption",
        "164.312(a)(2)(iv)",
        "Encryption and decryption",
    )
}

pub(super) fn audit_controls(cfg: &Config, f: &Facts, now: i64) -> Item {
    let mut b = Builder::new();
    match &f.audit {
        Ok((entries, checkpoints)) => b.note(format!(
            "audit verify: OK, {entries} entries (hash chain, MAC), {checkpoints} signed checkpoints"
        )),
        Err(e) => b.fail(format!("audit verify: {e}")),
    }
    let d = &f.db;
    if d.audit_append_only {
        b.note("the audit log is append-only (triggers refuse UPDATE and DELETE)");
    } else {
        b.fail("the audit log's append-only triggers are missing");
    }
    match d.last_checkpoint_ms {
        Some(t) => b.note(format!(
            "last signed checkpoint: entry {} at {} ({}); head entry {}",
            d.last_checkpoint_seq,
            iso8601_ms(t),
            ago(now, t),
            d.audit_head_seq
        )),
        None => b.note(format!(
            "no signed checkpoint yet; head entry {}",
            d.audit_head_seq
        )),
    }
    let since = d.last_checkpoint_ms.or(d.created_ms).unwrap_or(now);
    let limit_ms = 2 * cfg.audit.checkpoint_every_secs as i64 * 1000 + 60_000;
    if d.audit_head_seq > d.last_checkpoint_seq && now - since > limit_ms {
        b.warn(format!(
            "entries {}..{} are not covered by a signed checkpoint (the daemon signs every {} s while it runs; hema3n-edge audit checkpoint)",
            d.last_checkpoint_seq + 1,
            d.audit_head_seq,
            cfg.audit.checkpoint_every_secs
        ));
    }
    if cfg.sync.cloud_broker.is_some() {
        match d.last_receipt_ms {
            Some(t) => b.note(format!(
                "last signed receipt from the cloud (bundles carry the audit trail and its checkpoint): {} ({}); {} bundles awaiting one",
                iso8601_ms(t),
                ago(now, t),
                d.awaiting_receipt
            )),
            None => b.note(format!(
                "no signed receipt from the cloud yet; {} bundles awaiting one",
                d.awaiting_receipt
            )),
        }
    } else {
        b.note("sync is not configured: checkpoints stay on the appliance");
    }
    b.item("audit_controls", "164.312(b)", "Audit controls")
}

pub(super) fn integrity(f: &Facts) -> Item {
    let mut b = Builder::new();
    match &f.integrity {
        Ok(p) if p.is_empty() => {
            b.note("integrity check: ok (every page read is authenticated by its SQLCipher HMAC)")
        }
        Ok(p) => b.fail(format!("integrity check: {}", p.join("; "))),
        Err(e) => b.fail(format!("integrity check: {e}")),
    }
    b.note("PHI fields are AEAD-sealed (any change fails to open); the audit log is a MAC'd hash chain (audit_controls)");
    b.item("integrity", "164.312(c)(1)", "Integrity")
}

pub(super) fn authentication(cfg: &Config, f: &Facts) -> Item {
    use crate::crypto::password::{MAX_SECRET_LEN, MIN_SECRET_LEN};
    let mut b = Builder::new();
    let a = &cfg.api;
    b.note(format!(
        "crew PINs: {MIN_SECRET_LEN}-{MAX_SECRET_LEN} characters, no repeats or sequences, Argon2id (19 MiB, 2 passes)"
    ));
    b.note(format!(
        "sign-in throttling: back-off after {} failures per account and source (up to {} s), {} failures per account per day, {} per source per hour",
        a.login_backoff_after,
        a.login_backoff_max_secs,
        a.login_failures_per_day,
        a.login_source_failures_per_hour
    ));
    if a.login_backoff_after == 0 || a.login_backoff_max_secs == 0 {
        b.fail("sign-in back-off is off (api.login_backoff_after or login_backoff_max_secs is 0)");
    }
    if f.db.weak_hashes > 0 {
        b.warn(format!(
            "{} accounts' PINs are hashed under older parameters (hema3n-edge users set-secret ID)",
            f.db.weak_hashes
        ));
    }
    if cfg.ingest.require_registered_devices {
        b.note("devices: only registered devices may publish vitals (ingest.require_registered_devices)");
    } else {
        b.fail("ingest.require_registered_devices = false: any client of the on-board broker can publish vitals");
    }
    match (&cfg.mqtt.username, &cfg.mqtt.password_file) {
        (Some(u), Some(_)) => b.note(format!("on-board broker: the daemon signs in as `{u}`")),
        _ => b.note("on-board broker: the daemon connects without a password (a loopback broker)"),
    }
    if cfg.sync.client_cert.is_some() {
        b.note("cloud: the appliance authenticates with its client certificate (mTLS) and signs every bundle (ES256)");
    }
    b.item(
        "authentication",
        "164.312(d)",
        "Person or entity authentication",
    )
}

pub(super) fn transmission(cfg: &Config, f: &Facts) -> Item {
    let mut b = Builder::new();
    if cfg.api.enabled {
        b.note("tablet API: HTTPS only, TLS 1.2 and 1.3 only, no plaintext listener");
    }
    for c in &f.certificates {
        match &c.expiry {
            Ok((t, d)) if *d < 0 => b.fail(format!(
                "{} certificate expired {} ({} days ago)",
                c.name,
                iso8601_ms(*t),
                -d
            )),
            Ok((t, d)) if c.warn => b.warn(format!(
                "{} certificate expires {} (in {d} days)",
                c.name,
                iso8601_ms(*t)
            )),
            Ok((t, d)) => b.note(format!(
                "{} certificate valid until {} ({d} days)",
                c.name,
                iso8601_ms(*t)
            )),
            Err(e) => b.fail(format!("{} certificate unreadable: {e}", c.name)),
        }
    }
    let s = &cfg.sync;
    match cfg.sync.broker() {
        Ok(None) => b.note("sync to the cloud is not configured"),
        Ok(Some(u)) if u.tls => b.note(format!(
            "sync: MQTT over TLS to {} (CA-pinned), bundles HPKE-sealed and signed",
            u.host
        )),
        Ok(Some(u)) if is_loopback(&u.host) => b.note(format!(
            "sync: plain MQTT to {} — loopback only (this machine), bundles HPKE-sealed and signed",
            u.host
        )),
        Ok(Some(u)) => b.fail(format!(
            "sync: plain MQTT to {} over the network (sync.allow_plaintext)",
            u.host
        )),
        Err(e) => b.fail(format!("sync: {e}")),
    }
    if s.allow_plaintext && s.cloud_broker.is_none() {
        b.warn(
            "sync.allow_plaintext is set: a cloud broker added later could be reached without TLS",
        );
    }
    b.item(
        "transmission_security",
        "164.312(e)(1)",
        "Transmission security",
    )
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(super) fn backups(cfg: &Config, f: &Facts, now: i64) -> Item {
    let mut b = Builder::new();
    let limit_h = cfg.store.backup_max_age_hours as i64;
    match &f.last_backup {
        Some(l) => {
            b.note(format!(
                "last backup {} ({}), {} bytes, sha256 {}",
                iso8601_ms(l.at_ms),
                ago(now, l.at_ms),
                l.size,
                &l.sha256[..16.min(l.sha256.len())]
            ));
            if now - l.at_ms > limit_h * HOUR_MS {
                b.fail(format!(
                    "older than the {limit_h} h policy (store.backup_max_age_hours)"
                ));
            }
        }
        None => match f.db.created_ms {
            Some(c) if now - c <= limit_h * HOUR_MS => b.note(format!(
                "no backup yet; the appliance is {} old, the first is due within {limit_h} h (hema3n-backup.timer)",
                ago(now, c).trim_end_matches(" ago")
            )),
            _ => b.fail(format!(
                "no backup taken, the {limit_h} h policy has passed (hema3n-edge backup --out-dir D)"
            )),
        },
    }
    b.item("backups", "164.308(a)(7)(ii)(A)", "Data backup plan")
}

pub(super) fn key_ages(cfg: &Config, f: &Facts) -> Item {
    let mut b = Builder::new();
    let days = cfg.keys.rotate_after_days;
    b.note(format!(
        "territory keys rotate after {days} days (keys.rotate_after_days), automatically: {}",
        if cfg.keys.auto_rotate {
            "yes (hema3n-rotate-keys.timer)"
        } else {
            "no (keys.auto_rotate = false)"
        }
    ));
    for k in &f.key_ages {
        if k.due {
            b.fail(format!(
                "territory `{}` key v{} is {} days old (past {days})",
                k.territory, k.version, k.age_days
            ));
        } else {
            b.note(format!(
                "territory `{}` key v{} is {} days old",
                k.territory, k.version, k.age_days
            ));
        }
    }
    b.item("key_ages", "164.312(a)(2)(iv)", "Key ages")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::evaluate;
    use crate::lifecycle::KeyAge;
    use crate::storage::{ComplianceFacts, KeyVersionInfo, LastBackup};

    const NOW: i64 = 1_800_000_000_000;

    fn facts() -> Facts {
        Facts {
            db_error: None,
            db: ComplianceFacts {
                enabled_users: vec!["medic1".into(), "super1".into()],
                audit_head_seq: 10,
                last_checkpoint_seq: 10,
                last_checkpoint_ms: Some(NOW - 1000),
                created_ms: Some(NOW - HOUR_MS),
                audit_append_only: true,
                ..Default::default()
            },
            audit: Ok((10, 2)),
            integrity: Ok(vec![]),
            cipher_version: "4.6.1".into(),
            plaintext_header: false,
            keys_sealed: false,
            key_versions: vec![KeyVersionInfo {
                territory: "default".into(),
                version: 1,
                key_id: "k".into(),
                loaded: true,
                retired: false,
                data_keys: 4,
                invocations: 9,
            }],
            key_ages: vec![KeyAge {
                territory: "default".into(),
                version: 1,
                created_at_ms: NOW - HOUR_MS,
                age_days: 0,
                due: false,
            }],
            certificates: vec![],
            last_backup: None,
        }
    }

    fn status(cfg: &Config, f: &Facts, id: &str) -> Status {
        let r = evaluate(cfg, f, NOW);
        r.items.iter().find(|i| i.id == id).unwrap().status
    }

    #[test]
    fn defaults_pass_every_item() {
        let r = evaluate(&Config::default(), &facts(), NOW);
        assert_eq!(r.items.len(), 10);
        for i in &r.items {
            assert_eq!(i.status, Status::Pass, "{i:?}");
            assert!(!i.evidence.is_empty());
        }
        assert_eq!(r.worst, Status::Pass);
    }

    #[test]
    fn each_rule_fails_or_warns_on_its_own_finding() {
        let cfg = Config::default();
        let mut c = cfg.clone();
        c.api.idle_timeout_secs = 1200;
        assert_eq!(status(&c, &facts(), "automatic_logoff"), Status::Warn);
        c.api.idle_timeout_secs = 7200;
        c.api.session_lifetime_secs = 7200;
        assert_eq!(status(&c, &facts(), "automatic_logoff"), Status::Fail);
        assert_eq!(evaluate(&c, &facts(), NOW).worst, Status::Fail);

        let mut f = facts();
        f.db.enabled_users.push("Crew".into());
        assert_eq!(status(&cfg, &f, "unique_user_identification"), Status::Fail);
        f.db.enabled_users.clear();
        assert_eq!(status(&cfg, &f, "unique_user_identification"), Status::Warn);

        let mut c = cfg.clone();
        c.api.break_glass_minutes = 0;
        assert_eq!(status(&c, &facts(), "emergency_access"), Status::Fail);
        let mut f = facts();
        f.db.break_glass_oldest_pending_ms = Some(NOW - 8 * DAY_MS);
        assert_eq!(status(&cfg, &f, "emergency_access"), Status::Warn);

        let mut f = facts();
        f.key_versions[0].loaded = false;
        assert_eq!(status(&cfg, &f, "encryption"), Status::Fail);
        let mut f = facts();
        f.plaintext_header = true;
        assert_eq!(status(&cfg, &f, "encryption"), Status::Fail);

        let mut f = facts();
        f.audit = Err("entry 7: MAC invalid".into());
        assert_eq!(status(&cfg, &f, "audit_controls"), Status::Fail);
        let mut f = facts();
        f.db.audit_append_only = false;
        assert_eq!(status(&cfg, &f, "audit_controls"), Status::Fail);
        let mut f = facts();
        f.db.audit_head_seq = 20;
        f.db.last_checkpoint_ms = Some(NOW - 10 * 60_000);
        assert_eq!(status(&cfg, &f, "audit_controls"), Status::Warn);

        let mut f = facts();
        f.integrity = Ok(vec!["page 7: btree".into()]);
        assert_eq!(status(&cfg, &f, "integrity"), Status::Fail);
        let mut f = facts();
        f.db_error = Some("database disk image is malformed".into());
        assert_eq!(status(&cfg, &f, "key_ages"), Status::Fail);
        assert_eq!(status(&cfg, &f, "automatic_logoff"), Status::Pass);

        let mut c = cfg.clone();
        c.ingest.require_registered_devices = false;
        assert_eq!(status(&c, &facts(), "authentication"), Status::Fail);
        let mut f = facts();
        f.db.weak_hashes = 1;
        assert_eq!(status(&cfg, &f, "authentication"), Status::Warn);

        let mut c = cfg.clone();
        c.sync.allow_plaintext = true;
        c.sync.cloud_broker = Some("mqtt://127.0.0.1:1883".into());
        assert_eq!(status(&c, &facts(), "transmission_security"), Status::Pass);
        c.sync.cloud_broker = Some("mqtt://cloud.example.org:1883".into());
        assert_eq!(status(&c, &facts(), "transmission_security"), Status::Fail);

        let mut f = facts();
        f.last_backup = Some(LastBackup {
            at_ms: NOW - 25 * HOUR_MS,
            sha256: "ab".repeat(32),
            size: 1,
        });
        assert_eq!(status(&cfg, &f, "backups"), Status::Fail);
        let mut f = facts();
        f.db.created_ms = Some(NOW - 25 * HOUR_MS);
        assert_eq!(status(&cfg, &f, "backups"), Status::Fail);

        let mut f = facts();
        f.key_ages[0].due = true;
        assert_eq!(status(&cfg, &f, "key_ages"), Status::Fail);
    }

    #[test]
    fn exit_codes_follow_the_monitoring_plugin_convention() {
        assert_eq!(Status::Pass.code(), 0);
        assert_eq!(Status::Warn.code(), 1);
        assert_eq!(Status::Fail.code(), 2);
        assert!(is_loopback("127.0.0.1") && is_loopback("[::1]") && is_loopback("localhost"));
        assert!(!is_loopback("10.0.0.1"));
    }
}
