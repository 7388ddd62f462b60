//! Dispatch: loads the configuration (or prints it), starts logging, runs the subcommand and
//! turns its result into the exit code (errors printed with their whole cause chain).

use std::path::PathBuf;
use std::process::ExitCode;

use super::args::*;
use super::{self as cli, EXIT_CONFIG, Failure};
use crate::config::{Config, DEFAULT_CONFIG_PATH};

/// Runs the command `args` names and returns the process exit code.
pub fn main(args: Args) -> ExitCode {
    if let Some(Cmd::Init {
        data_dir,
        appliance_id,
        territory,
        lan_name,
    }) = &args.cmd
    {
        crate::systemd::init_logging(&Default::default());
        return finish(cli::init(data_dir, appliance_id, territory, lan_name));
    }
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let (cfg, prov) = match Config::load(&path, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "hema3n-edge: configuration error: {}",
                crate::report::Chain(&e)
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.print_config {
        let from = if prov.files.is_empty() {
            "embedded defaults".into()
        } else {
            prov.files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        print!("# effective configuration from: {from}\n{}", cfg.to_toml());
        return ExitCode::SUCCESS;
    }
    crate::systemd::init_logging(&cfg.log);
    // On a provisioned appliance the keys are encrypted credentials: commands that read them
    // decrypt them for themselves (as root) and continue as the daemon's user.
    let needs_keys = !matches!(
        &args.cmd,
        None | Some(Cmd::Model { .. })
            | Some(Cmd::Simulate(_))
            | Some(Cmd::Keys {
                cmd: KeysCmd::Seal { .. }
            })
    );
    let writes_keys = matches!(&args.cmd, Some(Cmd::Keys { .. }));
    let _admin = if needs_keys {
        match cli::admin_credentials(&cfg, writes_keys) {
            Ok(g) => g,
            Err(f) => return finish(Err(f)),
        }
    } else {
        None
    };
    let territory = |t: &Option<String>| t.clone().unwrap_or_else(|| cfg.default_territory.clone());
    let r = match &args.cmd {
        None => {
            eprintln!("hema3n-edge: no command given; try `hema3n-edge --help`");
            return ExitCode::from(2);
        }
        Some(Cmd::Init { .. }) => unreachable!("handled above"),
        Some(Cmd::Run) => {
            return match crate::app::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let code = e.exit_code();
                    tracing::error!(error = %crate::report::Chain(&e), code, "daemon stopped");
                    finish(Err(Failure {
                        code,
                        error: e.into(),
                    }))
                }
            };
        }
        Some(Cmd::Check {
            compliance: true,
            json,
        }) => cli::check_compliance(&cfg, *json),
        Some(Cmd::Check { .. }) => cli::check(&cfg, &prov.files),
        Some(Cmd::Backup {
            out,
            out_dir,
            keep,
            json,
        }) => cli::backup(&cfg, out.as_deref(), out_dir.as_deref(), *keep, *json),
        Some(Cmd::Restore { file, verify_only }) => cli::restore(&cfg, file, *verify_only),
        Some(Cmd::Model { cmd }) => match cmd {
            ModelCmd::Status => cli::model_status(&cfg),
            ModelCmd::Verify { dir } => cli::model_verify(&cfg, dir.as_deref()),
            ModelCmd::Install { dir } => cli::model_install(&cfg, dir),
            ModelCmd::Rollback => cli::model_rollback(&cfg),
            ModelCmd::Keygen { out } => cli::model_keygen(out),
            ModelCmd::Sign { dir, key } => cli::model_sign(dir, key),
        },
        Some(Cmd::Keys { cmd }) => match cmd {
            KeysCmd::Rotate {
                territory: t,
                if_due,
                no_rewrap,
                restart_unit,
            } => {
                let which = if *if_due {
                    cli::Rotation::Due
                } else {
                    cli::Rotation::Territory(territory(t))
                };
                cli::keys_rotate(&cfg, which, *no_rewrap, restart_unit.as_deref())
            }
            KeysCmd::Rewrap { territory: t } => cli::keys_rewrap(&cfg, &territory(t)),
            KeysCmd::Seal { with_key } => cli::keys_seal(&cfg, with_key),
            KeysCmd::RekeyDb => cli::keys_rekey_db(&cfg),
            KeysCmd::RotateIndex => cli::keys_rotate_index(&cfg),
            KeysCmd::RotateAudit => cli::keys_rotate_audit(&cfg),
            KeysCmd::RotateSigning { out, activate } => {
                cli::keys_rotate_signing(&cfg, *activate, out.as_deref())
            }
            KeysCmd::Retire {
                territory: t,
                version,
            } => cli::keys_retire(&cfg, &territory(t), *version),
            KeysCmd::List => cli::keys_list(&cfg),
            KeysCmd::ExportPublic { out } => cli::keys_export_public(&cfg, out.as_deref()),
            KeysCmd::ImportReceiver { file } => cli::keys_import_receiver(&cfg, file),
            KeysCmd::EscrowKeygen { out } => cli::keys_escrow_keygen(out),
            KeysCmd::Escrow { to, out } => cli::keys_escrow(&cfg, to, out),
            KeysCmd::Recover { file, escrow_key } => cli::keys_recover(&cfg, file, escrow_key),
        },
        Some(Cmd::Audit { cmd }) => match cmd {
            AuditCmd::Verify { json } => cli::audit_verify(&cfg, *json),
            AuditCmd::Checkpoint => cli::audit_checkpoint(&cfg),
            AuditCmd::Query(q) => cli::audit_query(&cfg, q),
            AuditCmd::Prune { dry_run } => cli::audit_prune(&cfg, *dry_run),
            AuditCmd::Disclosures {
                patient,
                format,
                territory,
                out,
            } => {
                cli::audit_disclosures(&cfg, patient, format, territory.as_deref(), out.as_deref())
            }
        },
        Some(Cmd::Debug {
            cmd: DebugCmd::BundleVectors,
        }) => cli::debug_bundle_vectors(),
        Some(Cmd::Debug {
            cmd: DebugCmd::Soak { count, last_name },
        }) => cli::debug_soak(&cfg, *count, last_name),
        Some(Cmd::Devices { cmd }) => match cmd {
            DevicesCmd::Add {
                id,
                kind,
                territory: t,
            } => cli::devices_add(&cfg, id, kind, &territory(t)),
            DevicesCmd::Remove { id } => cli::devices_remove(&cfg, id),
            DevicesCmd::List => cli::devices_list(&cfg),
            DevicesCmd::Bind {
                device,
                case,
                attach_unbound,
            } => cli::devices_bind(&cfg, device, case, *attach_unbound),
            DevicesCmd::Unbind { device } => cli::devices_unbind(&cfg, device),
        },
        Some(Cmd::Users { cmd }) => match cmd {
            UsersCmd::Add {
                id,
                name,
                role,
                territory: t,
            } => cli::users_add(&cfg, id, name, role, &territory(t)),
            UsersCmd::Disable { id } => cli::users_disable(&cfg, id, true),
            UsersCmd::Enable { id } => cli::users_disable(&cfg, id, false),
            UsersCmd::SetSecret { id } => cli::users_set_secret(&cfg, id),
            UsersCmd::List { json } => cli::users_list(&cfg, *json),
        },
        Some(Cmd::Cases { cmd }) => match cmd {
            CasesCmd::Open {
                territory: t,
                chief_complaint,
            } => cli::cases_open(&cfg, &territory(t), chief_complaint.as_deref()),
            CasesCmd::Close { case } => cli::cases_close(&cfg, case),
            CasesCmd::ExportNemsis { case, out } => {
                cli::cases_export_nemsis(&cfg, case, out.as_deref())
            }
            CasesCmd::Attach {
                case,
                file,
                kind,
                caption,
            } => cli::cases_attach(&cfg, case, file, kind, caption.as_deref()),
            CasesCmd::AttachmentExport {
                case,
                attachment,
                out,
                deidentified,
            } => cli::cases_attachment_export(&cfg, case, attachment, out, *deidentified),
            CasesCmd::HandoffPdf { case, out, format } => {
                cli::cases_handoff_pdf(&cfg, case, out, format.as_deref())
            }
        },
        Some(Cmd::Outbox { cmd }) => match cmd {
            OutboxCmd::Status { json } => cli::outbox_status(&cfg, *json),
            OutboxCmd::List { last } => cli::outbox_list(&cfg, *last),
        },
        Some(Cmd::Triage {
            cmd: TriageCmd::Show { case, last },
        }) => cli::triage_show(&cfg, case, *last),
        Some(Cmd::Simulate(a)) => match sim_options(&cfg, a) {
            Ok(o) => cli::simulate(o),
            Err(e) => Err(Failure { code: 2, error: e }),
        },
    };
    finish(r)
}

fn sim_options(cfg: &Config, a: &SimArgs) -> anyhow::Result<crate::ingest::simulate::SimOptions> {
    use crate::ingest::simulate::{Fault, Scenario, SimOptions};
    let url = a.broker.clone().unwrap_or_else(|| cfg.mqtt.broker.clone());
    let (host, port) = crate::config::parse_mqtt_url(&url)
        .ok_or_else(|| anyhow::anyhow!("--broker `{url}` is not mqtt://host:port"))?;
    let scenario = match a.scenario.as_str() {
        "mixed" => None,
        s => Some(Scenario::parse(s).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown scenario `{s}` (stable, sepsis, shock, hypoglycaemia, head-injury, mixed)"
            )
        })?),
    };
    let faults = a
        .faults
        .iter()
        .filter(|f| !f.is_empty())
        .map(|f| {
            Fault::parse(f).ok_or_else(|| {
                anyhow::anyhow!("unknown fault `{f}` (bad-units, garbage, duplicates, clock-skew)")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !(1..=11).contains(&a.readings_per_pack) {
        anyhow::bail!("--readings-per-pack must be 1-11");
    }
    Ok(SimOptions {
        host,
        port,
        devices: a.devices,
        device_prefix: a.device_prefix.clone(),
        scenario,
        interval: std::time::Duration::from_millis(a.interval_ms),
        count: a.count,
        duration: a.duration_secs.map(std::time::Duration::from_secs),
        scenario_secs: a.scenario_secs.max(1.0),
        readings_per_pack: a.readings_per_pack,
        faults,
        fault_rate: a.fault_rate.clamp(0.0, 1.0),
        seed: a.seed,
        credentials: a
            .password
            .clone()
            .map(|p| (a.username.clone().unwrap_or_default(), p)),
    })
}

fn finish(r: cli::CmdResult) -> ExitCode {
    match r {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, error }) => {
            eprintln!(
                "hema3n-edge: error: {}",
                crate::report::Chain(error.as_ref())
            );
            ExitCode::from(code)
        }
    }
}
