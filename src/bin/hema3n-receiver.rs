//! `hema3n-receiver`: the cloud sync receiver (thin: parse CLI, init logging, call `receiver`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hema3n_edge::receiver::{self, Keys, ReceiverConfig, ReceiverError};
use hema3n_edge::storage::receiver::ReceiverStore;

#[derive(Parser)]
#[command(
    name = "hema3n-receiver",
    version,
    about = "HEMA3N cloud receiver: verifies, opens, stores and receipts sealed case bundles"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "HEMA3N_RECEIVER_CONFIG",
        default_value = "/etc/hema3n-receiver/receiver.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Creates keys (never overwriting) and DIR/receiver.toml.
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        /// Cloud broker URL (mqtts://host:port, or mqtt:// for loopback development).
        #[arg(long, default_value = "mqtts://127.0.0.1:8883")]
        broker: String,
        #[arg(long, default_value = "hema3n-cloud")]
        receiver_id: String,
        /// CA certificate (PEM) of the cloud broker; required for mqtts://.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Runs the receiver until SIGTERM/SIGINT.
    Run,
    /// Prints the public keys appliances import (`hema3n-edge keys import-receiver FILE`).
    ExportPublic {
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Registered appliance signing keys.
    #[command(subcommand)]
    Appliances(AppCmd),
    /// Stored bundles, resends, rejects by code and conflict alarms (JSON).
    Stats,
    /// Lists stored bundles, or prints one bundle's FHIR JSON (or, with `--nemsis`, the
    /// NEMSIS v3.5.1 document a case bundle carries, for submission to the state).
    Bundles {
        /// `APPLIANCE_ID/BUNDLE_ID` to print.
        show: Option<String>,
        /// Print the bundle's NEMSIS document instead of its FHIR JSON.
        #[arg(long, requires = "show")]
        nemsis: bool,
    },
    /// Attachments received (photos, ECG strips, forms, ultrasound): one JSON object per line;
    /// or, with `--export APPLIANCE_ID/ATTACHMENT_ID --out FILE`, writes a complete
    /// attachment's file (its SHA-256 verified on arrival).
    Attachments {
        #[arg(long, value_name = "APPLIANCE_ID/ATTACHMENT_ID", requires = "out")]
        export: Option<String>,
        #[arg(long, requires = "export")]
        out: Option<PathBuf>,
    },
    /// Pre-alerts by case: the latest (destination, ETA, ESI, time-critical flags) and the
    /// chain of those it replaced. `--watch` keeps printing cases as new pre-alerts arrive.
    Prealerts {
        #[arg(long)]
        watch: bool,
        /// One JSON object per case.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AppCmd {
    /// Registers an appliance's ES256 public key (PEM from `hema3n-edge keys export-public`);
    /// replaces any key it had at once (a compromised key).
    Add {
        id: String,
        pem_file: PathBuf,
    },
    /// A new signing key of a registered appliance (`hema3n-edge keys rotate-signing`); the
    /// current one stays accepted for the overlap, for envelopes and checkpoints signed before
    /// the change.
    AddKey {
        id: String,
        pem_file: PathBuf,
        #[arg(long, default_value_t = 30)]
        overlap_days: u32,
    },
    /// Revokes an appliance: its envelopes are rejected from now on.
    Revoke {
        id: String,
    },
    List,
}

/// The configured store: the embedded SQLCipher file or the shared PostgreSQL database.
fn open_db(cfg: &ReceiverConfig) -> Result<Box<dyn ReceiverStore>, ReceiverError> {
    let keys = Keys::load(&cfg.keys_dir)?;
    cfg.open_store(&keys)
}

/// A P-256 public key from a PEM file.
fn read_public(
    pem_file: &std::path::Path,
) -> Result<hema3n_edge::crypto::sign::PublicKey, ReceiverError> {
    let pem = std::fs::read_to_string(pem_file)
        .map_err(|e| ReceiverError::Io(format!("{}: {e}", pem_file.display())))?;
    hema3n_edge::crypto::sign::PublicKey::from_pem(&pem).ok_or_else(|| {
        ReceiverError::Io(format!(
            "{} is not a P-256 public key (PEM)",
            pem_file.display()
        ))
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HEMA3N_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: the journal and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hema3n-receiver: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn load(path: &Path) -> Result<ReceiverConfig, ReceiverError> {
    ReceiverConfig::load(path)
}

fn run(cli: Cli) -> Result<(), ReceiverError> {
    match cli.cmd {
        Cmd::Init {
            data_dir,
            broker,
            receiver_id,
            ca_file,
        } => {
            let p = receiver::init(&data_dir, &broker, &receiver_id, ca_file.as_deref())?;
            println!("created {}", p.display());
            Ok(())
        }
        Cmd::Run => {
            let cfg = load(&cli.config)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| ReceiverError::Io(e.to_string()))?;
            rt.block_on(async move {
                let (tx, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("SIGTERM handler");
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                    let _ = tx.send(true);
                });
                let c = receiver::run(cfg, rx).await?;
                tracing::info!(
                    stored = c.stored,
                    duplicates = c.duplicates,
                    rejects = c.rejects,
                    conflicts = c.conflicts,
                    "receiver stopped"
                );
                Ok(())
            })
        }
        Cmd::ExportPublic { out } => {
            let cfg = load(&cli.config)?;
            let keys = Keys::load(&cfg.keys_dir)?;
            let hpke = Keys::load_hpke(&cfg.keys_dir)?;
            let text = keys.public(&cfg.receiver_id, hpke.public()).to_toml();
            match out {
                Some(p) => std::fs::write(&p, text).map_err(|e| ReceiverError::Io(e.to_string())),
                None => {
                    print!("{text}");
                    Ok(())
                }
            }
        }
        Cmd::Appliances(c) => {
            let cfg = load(&cli.config)?;
            let mut db = open_db(&cfg)?;
            match c {
                AppCmd::Add { id, pem_file } => {
                    if !hema3n_edge::model::is_valid_ident(&id) {
                        return Err(ReceiverError::Io(
                            "appliance id must match [A-Za-z0-9._-]{1,64}".into(),
                        ));
                    }
                    let key = read_public(&pem_file)?;
                    db.add_appliance(&id, &key.to_pem())?;
                    println!("registered appliance {id} (key id {})", key.key_id());
                }
                AppCmd::AddKey {
                    id,
                    pem_file,
                    overlap_days,
                } => {
                    let key = read_public(&pem_file)?;
                    let until = hema3n_edge::model::now_ms() + i64::from(overlap_days) * 86_400_000;
                    if !db.add_appliance_key(&id, &key.to_pem(), until)? {
                        return Err(ReceiverError::Io(format!(
                            "no active appliance {id}, or it already has key {}",
                            key.key_id()
                        )));
                    }
                    println!(
                        "appliance {id}: key {} is current; the previous key is accepted until {}",
                        key.key_id(),
                        hema3n_edge::model::iso8601_ms(until)
                    );
                }
                AppCmd::Revoke { id } => {
                    if db.revoke_appliance(&id)? {
                        println!("revoked {id}");
                    } else {
                        return Err(ReceiverError::Io(format!("no active appliance {id}")));
                    }
                }
                AppCmd::List => {
                    let kid = |pem: &str| {
                        hema3n_edge::crypto::sign::PublicKey::from_pem(pem)
                            .map(|k| k.key_id())
                            .unwrap_or_default()
                    };
                    for (id, pem, revoked) in db.appliances()? {
                        let overlap = match db.appliance_keys(&id)?.get(1) {
                            Some(prev) => format!("\talso key {} (overlap)", kid(prev)),
                            None => String::new(),
                        };
                        println!(
                            "{id}\tkey {}{overlap}{}",
                            kid(&pem),
                            if revoked { "\trevoked" } else { "" }
                        );
                    }
                }
            }
            Ok(())
        }
        Cmd::Attachments { export, out } => {
            let cfg = load(&cli.config)?;
            let mut db = open_db(&cfg)?;
            match (export, out) {
                (Some(which), Some(out)) => {
                    let (app, id) = which.split_once('/').ok_or_else(|| {
                        ReceiverError::Io("--export takes APPLIANCE_ID/ATTACHMENT_ID".into())
                    })?;
                    let tmp = out.with_extension("partial");
                    let mut f = std::fs::File::create(&tmp)
                        .map_err(|e| ReceiverError::Io(format!("{}: {e}", tmp.display())))?;
                    let n = db.export_attachment(app, id, &mut f)?;
                    f.sync_all()
                        .and_then(|_| std::fs::rename(&tmp, &out))
                        .map_err(|e| ReceiverError::Io(format!("{}: {e}", out.display())))?;
                    println!("wrote {n} bytes to {}", out.display());
                }
                _ => {
                    for a in db.attachments()? {
                        println!("{}", serde_json::to_string(&a).expect("json"));
                    }
                }
            }
            Ok(())
        }
        Cmd::Stats => {
            let cfg = load(&cli.config)?;
            let mut db = open_db(&cfg)?;
            println!(
                "{}",
                serde_json::to_string(&db.stats()?).expect("stats serialise")
            );
            Ok(())
        }
        Cmd::Prealerts { watch, json } => {
            use hema3n_edge::receiver::prealerts::{chains, describe};
            let cfg = load(&cli.config)?;
            let mut db = open_db(&cfg)?;
            // Every row read once; each round reads only what arrived since (the same
            // millisecond again, as a batch may land in it after the last read).
            let mut all: Vec<hema3n_edge::storage::receiver::PrealertRow> = vec![];
            let mut known = std::collections::HashSet::new();
            let mut since = i64::MIN;
            loop {
                let fresh: Vec<_> = db
                    .prealerts(since.saturating_sub(1))?
                    .into_iter()
                    .filter(|r| known.insert((r.appliance_id.clone(), r.bundle_id.clone())))
                    .collect();
                since = fresh
                    .iter()
                    .map(|r| r.received_at_ms)
                    .max()
                    .unwrap_or(since);
                // Whole chains of the cases that changed (or of every case, the first time).
                let cases: Vec<(String, String)> = fresh
                    .iter()
                    .map(|r| (r.appliance_id.clone(), r.summary.case_id.clone()))
                    .collect();
                all.extend(fresh);
                for c in chains(all.clone()) {
                    if !cases.contains(&(c.appliance_id.clone(), c.case_id.clone())) {
                        continue;
                    }
                    if json {
                        println!("{}", serde_json::to_string(&c).expect("json"));
                    } else {
                        println!("{}", describe(&c));
                    }
                }
                if !watch {
                    return Ok(());
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        Cmd::Bundles { show, nemsis } => {
            let cfg = load(&cli.config)?;
            let mut db = open_db(&cfg)?;
            match show {
                None => {
                    for (a, b, seq, kind) in db.list_bundles()? {
                        println!("{a}\t{b}\t{seq}\t{kind}");
                    }
                }
                Some(s) => {
                    let (a, b) = s.split_once('/').ok_or_else(|| {
                        ReceiverError::Io("expected APPLIANCE_ID/BUNDLE_ID".into())
                    })?;
                    let body = db
                        .bundle_body(a, b)?
                        .ok_or_else(|| ReceiverError::Io(format!("no bundle {s}")))?;
                    if nemsis {
                        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                            ReceiverError::Io(format!("bundle {s} is not JSON: {e}"))
                        })?;
                        let doc = hema3n_edge::sync::nemsis_document(&v)
                            .map_err(|why| ReceiverError::Io(format!("bundle {s}: {why}")))?;
                        print!("{}", String::from_utf8_lossy(&doc));
                    } else {
                        println!("{}", String::from_utf8_lossy(&body));
                    }
                }
            }
            Ok(())
        }
    }
}
