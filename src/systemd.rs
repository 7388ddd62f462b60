//! Host integration: sd_notify (READY, STATUS, WATCHDOG, STOPPING), watchdog interval, the
//! choice between journald and stderr logging, and `systemd-creds` (encrypted credentials). The only module that imports `sd-notify` and
//! `tracing-journald`.

use std::path::Path;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// READY=1 with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// STATUS=<one line>.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// WATCHDOG=1.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// STOPPING=1 with a status line.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC` for this PID), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// True when stderr is connected to the journal (systemd sets `JOURNAL_STREAM`).
fn under_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
        && std::path::Path::new("/run/systemd/journal/socket").exists()
}

/// Installs the global `tracing` subscriber. `RUST_LOG` overrides the configured level.
pub fn init_logging(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let want_journal = match cfg.format {
        LogFormat::Journald => true,
        LogFormat::Text => false,
        LogFormat::Auto => under_journal(),
    };
    if want_journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(layer.with_syslog_identifier("hema3n-edge".into()))
                    .try_init();
                return;
            }
            Err(e) => eprintln!("hema3n-edge: journald unavailable ({e}); logging to stderr"),
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Runs `systemd-creds ARGS`; stdout, or the tool's own error text.
fn creds(args: &[&std::ffi::OsStr]) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let out = std::process::Command::new("systemd-creds")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run systemd-creds: {e}"))?;
    let stdout = zeroize::Zeroizing::new(out.stdout);
    if out.status.success() {
        Ok(stdout)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rfind(|l| !l.contains("not located on encrypted media"))
            .unwrap_or("no message");
        Err(format!("systemd-creds failed ({}): {last}", out.status))
    }
}

/// Runs `systemctl ARGS` (it waits for the jobs it starts); its own error text on failure.
pub fn systemctl(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("systemctl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            err.lines().last().unwrap_or("no message")
        ))
    }
}

/// Encrypts `input` as credential `name` into `output` (`--with-key`: `auto` = the TPM2 when
/// there is one, and the host's credential secret).
pub fn creds_encrypt(
    name: &str,
    with_key: &str,
    input: &Path,
    output: &Path,
) -> Result<(), String> {
    let name = format!("--name={name}");
    let key = format!("--with-key={with_key}");
    creds(&[
        "encrypt".as_ref(),
        name.as_ref(),
        key.as_ref(),
        input.as_os_str(),
        output.as_os_str(),
    ])
    .map(drop)
}

/// Decrypts credential `name` from `input` into memory.
pub fn creds_decrypt(name: &str, input: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let name = format!("--name={name}");
    creds(&[
        "decrypt".as_ref(),
        name.as_ref(),
        input.as_os_str(),
        "-".as_ref(),
    ])
}
