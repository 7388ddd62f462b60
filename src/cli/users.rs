//! `users …`: personal accounts (the PIN/password is read from stdin, never argv).

use crate::config::Config;
use crate::model::Actor;

use super::{CmdResult, Failure, open_db};

/// Reads a new PIN/password: one line on stdin.
pub(super) fn read_secret() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let secret = line.trim_end_matches(['\r', '\n']).to_string();
    crate::crypto::password::check_policy(&secret).map_err(|e| Failure {
        code: 65,
        error: anyhow::anyhow!(e),
    })?;
    Ok(secret)
}

/// `users add`: a personal account; the PIN/password is read from stdin (one line).
pub fn users_add(cfg: &Config, id: &str, name: &str, role: &str, territory: &str) -> CmdResult {
    let role = crate::model::validate_user(id, name, role, territory).map_err(|e| Failure {
        code: 65,
        error: anyhow::anyhow!(e),
    })?;
    let secret = read_secret()?;
    let phc = crate::crypto::password::hash_secret(&secret)?;
    let mut db = open_db(cfg)?;
    db.add_user(&Actor::cli(), id, name, role, territory, &phc)?;
    println!("added user {id} ({role}, territory {territory})");
    Ok(0)
}

/// `users set-secret`: replaces a PIN/password (stdin) and ends the account's sessions.
pub fn users_set_secret(cfg: &Config, id: &str) -> CmdResult {
    let secret = read_secret()?;
    let phc = crate::crypto::password::hash_secret(&secret)?;
    let mut db = open_db(cfg)?;
    db.set_user_secret(&Actor::cli(), id, &phc)?;
    println!("new PIN/password set for {id}; its sessions ended");
    Ok(0)
}

/// `users disable|enable`.
pub fn users_disable(cfg: &Config, id: &str, disabled: bool) -> CmdResult {
    let mut db = open_db(cfg)?;
    db.set_user_disabled(&Actor::cli(), id, disabled)?;
    println!(
        "{} user {id}",
        if disabled { "disabled" } else { "enabled" }
    );
    Ok(0)
}

/// `users list`.
pub fn users_list(cfg: &Config, json: bool) -> CmdResult {
    let db = open_db(cfg)?;
    let users = db.list_users(None)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&users).expect("users serialise")
        );
        return Ok(0);
    }
    println!(
        "{:<20} {:<11} {:<16} {:<9} NAME",
        "ID", "ROLE", "TERRITORY", "STATE"
    );
    for u in users {
        println!(
            "{:<20} {:<11} {:<16} {:<9} {}",
            u.id,
            u.role,
            u.territory,
            if u.pending_approval {
                "pending"
            } else if u.disabled {
                "disabled"
            } else {
                "active"
            },
            u.display_name
        );
    }
    Ok(0)
}
