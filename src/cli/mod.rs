//! Subcommands other than `run`, one file per group: `setup` (init, check), `keys`,
//! `territory` (territory keys: rotate, rewrap, retire, list), `audit`,
//! `backup` (backup, restore), `credstore` (keys seal, admin access to encrypted credentials),
//! `escrow` (keys escrow-keygen, escrow, recover), `model`,
//! `records` (devices, cases, triage, outbox), `attachments`, `users`, `debug` (simulate, soak, vectors).
//! Each returns the process exit code: 0 ok, 1 failure, 78 setup/configuration error; this file
//! holds the shared failure type.

mod args;
mod attachments;
mod audit;
mod backup;
mod credstore;
mod debug;
mod dispatch;
mod escrow;
mod keys;
mod model;
mod records;
mod setup;
mod territory;
mod users;

pub use args::Args;
pub use attachments::{cases_attach, cases_attachment_export};
pub use audit::{audit_checkpoint, audit_disclosures, audit_prune, audit_query, audit_verify};
pub use backup::{backup, restore};
pub use credstore::{AdminCredentials, admin_credentials, keys_seal};
pub use debug::{debug_bundle_vectors, debug_soak, simulate};
pub use dispatch::main;
pub use escrow::{keys_escrow, keys_escrow_keygen, keys_recover};
pub use keys::{
    keys_export_public, keys_import_receiver, keys_rekey_db, keys_rotate_audit, keys_rotate_index,
    keys_rotate_signing,
};
pub use model::{
    model_install, model_keygen, model_rollback, model_sign, model_status, model_verify,
};
pub use records::{
    cases_close, cases_export_nemsis, cases_handoff_pdf, cases_open, devices_add, devices_bind,
    devices_list, devices_remove, devices_unbind, outbox_list, outbox_status, triage_show,
};
pub use setup::{check, check_compliance, init};
pub use territory::{Rotation, keys_list, keys_retire, keys_rewrap, keys_rotate};
pub use users::{users_add, users_disable, users_list, users_set_secret};

use crate::config::Config;
use crate::crypto::keyring::{KeyError, KeySources, Keyring};
use crate::storage::{Db, StoreError};

/// Exit code for configuration and setup errors (sysexits EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

/// A failed command: the message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure {
            code: if e.is_config() { EXIT_CONFIG } else { 1 },
            error: e.into(),
        }
    }
}

impl From<KeyError> for Failure {
    fn from(e: KeyError) -> Self {
        Failure {
            code: EXIT_CONFIG,
            error: e.into(),
        }
    }
}

impl From<crate::crypto::CryptoError> for Failure {
    fn from(e: crate::crypto::CryptoError) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

pub type CmdResult = Result<u8, Failure>;

pub(crate) fn open_db(cfg: &Config) -> Result<Db, Failure> {
    let keys = Keyring::load(KeySources::from_env(&cfg.keys.dir))?;
    Ok(Db::open(cfg, keys)?)
}
