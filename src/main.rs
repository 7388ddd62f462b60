//! `hema3n-edge`: parse the command line, load config, init logging, dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hema3n_edge::cli::{self, EXIT_CONFIG, Failure};
use hema3n_edge::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Parser)]
#[command(
    name = "hema3n-edge",
    version,
    about = "HEMA3N Edge appliance daemon and administration CLI"
)]
struct Args {
    /// Base configuration file; drop-ins are read from `edge.d/` beside it.
    #[arg(long, global = true, env = "HEMA3N_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print the effective configuration (defaults, file and drop-ins merged) and exit.
    #[arg(long, global = true)]
    print_config: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (systemd Type=notify).
    Run,
    /// Create a data directory with keys, config and database for a development machine.
    Init {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Appliance (vehicle) id written into the new config.
        #[arg(long, default_value = "hema3n-dev")]
        appliance_id: String,
        /// Default territory; its first key version is created.
        #[arg(long, default_value = "default")]
        territory: String,
    },
    /// Diagnose configuration, keys and database.
    Check,
    /// Key management.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Field devices: registry, broker credentials, binding to cases.
    Devices {
        #[command(subcommand)]
        cmd: DevicesCmd,
    },
    /// Triage results of a case.
    Triage {
        #[command(subcommand)]
        cmd: TriageCmd,
    },
    /// Cases: open one, close one (its bundle is then sealed and queued for the cloud).
    Cases {
        #[command(subcommand)]
        cmd: CasesCmd,
    },
    /// The outbox of sealed bundles and its custody state.
    Outbox {
        #[command(subcommand)]
        cmd: OutboxCmd,
    },
    /// Crew accounts for the tablet (PIN/password read from stdin, one line).
    Users {
        #[command(subcommand)]
        cmd: UsersCmd,
    },
    /// Simulated field devices publishing SenML vitals that follow clinical scenarios.
    Simulate(SimArgs),
    /// Diagnostics and soak workloads for operators and test harnesses.
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        cmd: DebugCmd,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a new territory key version and re-wrap data keys under it.
    Rotate {
        #[arg(long)]
        territory: Option<String>,
        /// Only create the version; leave re-wrapping to `keys rewrap`.
        #[arg(long)]
        no_rewrap: bool,
    },
    /// Re-wrap every data key of a territory under its current key version.
    Rewrap {
        #[arg(long)]
        territory: Option<String>,
    },
    /// Retire an old territory key version once no data key uses it.
    Retire {
        #[arg(long)]
        territory: Option<String>,
        #[arg(long)]
        version: u32,
    },
    /// List territory key versions and their use.
    List,
    /// Print the appliance public signing key (PEM).
    ExportPublic {
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Install the cloud receiver's public keys (from `hema3n-receiver export-public`).
    ImportReceiver {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum UsersCmd {
    /// Add a personal account; reads its PIN/password (6-128 characters) from stdin.
    Add {
        id: String,
        /// Name shown on the tablet.
        #[arg(long)]
        name: String,
        /// paramedic, emt, staff, supervisor or admin.
        #[arg(long)]
        role: String,
        #[arg(long)]
        territory: Option<String>,
    },
    /// Disable an account (its sessions end at once).
    Disable { id: String },
    /// Re-enable an account.
    Enable { id: String },
    /// Replace an account's PIN/password (stdin); its sessions end.
    SetSecret { id: String },
    /// List accounts (never secrets).
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CasesCmd {
    /// Open a case (optionally with a chief complaint); prints its id.
    Open {
        #[arg(long)]
        territory: Option<String>,
        #[arg(long)]
        chief_complaint: Option<String>,
    },
    /// Close a case: the daemon seals its FHIR bundle and sends it to the cloud.
    Close { case: String },
}

#[derive(Subcommand)]
enum OutboxCmd {
    /// Counts by custody state (queued, sent, receipted, purged) and the oldest pending row.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The most recent rows, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        last: usize,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify the hash chain, MACs, signed checkpoints and head; exit 1 naming the first bad entry.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Sign a checkpoint over the current head now.
    Checkpoint,
}

#[derive(Subcommand)]
enum DevicesCmd {
    /// Register a device and print its broker password (once).
    Add {
        id: String,
        #[arg(long, default_value = "monitor")]
        kind: String,
        #[arg(long)]
        territory: Option<String>,
    },
    /// Remove a device (its readings are kept).
    Remove { id: String },
    /// List registered devices.
    List,
    /// Bind a device to a case; `--attach-unbound` moves readings it sent while unbound.
    Bind {
        device: String,
        case: String,
        #[arg(long)]
        attach_unbound: bool,
    },
    /// Unbind a device from its case.
    Unbind { device: String },
}

#[derive(Subcommand)]
enum TriageCmd {
    /// Show the latest triage of a case with its reasons.
    Show {
        case: String,
        /// How many results to list (newest first).
        #[arg(long, default_value_t = 1)]
        last: usize,
    },
}

#[derive(clap::Args)]
struct SimArgs {
    /// On-board broker; default: mqtt.broker from the config.
    #[arg(long)]
    broker: Option<String>,
    #[arg(long, default_value_t = 1)]
    devices: usize,
    #[arg(long, default_value = "sim-")]
    device_prefix: String,
    /// stable, sepsis, shock, hypoglycaemia, head-injury, or mixed (one per device in turn).
    #[arg(long, default_value = "mixed")]
    scenario: String,
    /// Milliseconds between packs of one device (0 = as fast as the broker accepts).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Packs per device (0 = until --duration-secs, or forever).
    #[arg(long, default_value_t = 0)]
    count: u64,
    #[arg(long)]
    duration_secs: Option<u64>,
    /// Seconds a scenario takes from its start to its end state.
    #[arg(long, default_value_t = 600.0)]
    scenario_secs: f64,
    /// Readings per pack, 1-11.
    #[arg(long, default_value_t = 11)]
    readings_per_pack: usize,
    /// Comma-separated: bad-units, garbage, duplicates, clock-skew.
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Probability that a pack carries one of the faults.
    #[arg(long, default_value_t = 0.1)]
    fault_rate: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Broker credentials for every simulated device (user = device id when omitted).
    #[arg(long)]
    username: Option<String>,
    #[arg(long, env = "HEMA3N_SIM_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

#[derive(Subcommand)]
enum DebugCmd {
    /// Print fresh envelope and receipt test vectors for docs/bundle-format.md.
    BundleVectors,
    /// Write patients and cases, printing each id after COMMIT (0 = until killed).
    Soak {
        #[arg(long, default_value_t = 0)]
        count: u64,
        #[arg(long, default_value = "Soakington")]
        last_name: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::Init {
        data_dir,
        appliance_id,
        territory,
    }) = &args.cmd
    {
        hema3n_edge::systemd::init_logging(&Default::default());
        return finish(cli::init(data_dir, appliance_id, territory));
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
                anyhow::Error::from(e)
                    .chain()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(": ")
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
    hema3n_edge::systemd::init_logging(&cfg.log);
    let territory = |t: &Option<String>| t.clone().unwrap_or_else(|| cfg.default_territory.clone());
    let r = match &args.cmd {
        None => {
            eprintln!("hema3n-edge: no command given; try `hema3n-edge --help`");
            return ExitCode::from(2);
        }
        Some(Cmd::Init { .. }) => unreachable!("handled above"),
        Some(Cmd::Run) => {
            return match hema3n_edge::app::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let code = e.exit_code();
                    tracing::error!(error = %hema3n_edge::report::Chain(&e), code, "daemon stopped");
                    finish(Err(Failure {
                        code,
                        error: e.into(),
                    }))
                }
            };
        }
        Some(Cmd::Check) => cli::check(&cfg, &prov.files),
        Some(Cmd::Keys { cmd }) => match cmd {
            KeysCmd::Rotate {
                territory: t,
                no_rewrap,
            } => cli::keys_rotate(&cfg, &territory(t), *no_rewrap),
            KeysCmd::Rewrap { territory: t } => cli::keys_rewrap(&cfg, &territory(t)),
            KeysCmd::Retire {
                territory: t,
                version,
            } => cli::keys_retire(&cfg, &territory(t), *version),
            KeysCmd::List => cli::keys_list(&cfg),
            KeysCmd::ExportPublic { out } => cli::keys_export_public(&cfg, out.as_deref()),
            KeysCmd::ImportReceiver { file } => cli::keys_import_receiver(&cfg, file),
        },
        Some(Cmd::Audit { cmd }) => match cmd {
            AuditCmd::Verify { json } => cli::audit_verify(&cfg, *json),
            AuditCmd::Checkpoint => cli::audit_checkpoint(&cfg),
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

fn sim_options(
    cfg: &Config,
    a: &SimArgs,
) -> anyhow::Result<hema3n_edge::ingest::simulate::SimOptions> {
    use hema3n_edge::ingest::simulate::{Fault, Scenario, SimOptions};
    let url = a.broker.clone().unwrap_or_else(|| cfg.mqtt.broker.clone());
    let (host, port) = hema3n_edge::config::parse_mqtt_url(&url)
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
                hema3n_edge::report::Chain(error.as_ref())
            );
            ExitCode::from(code)
        }
    }
}
