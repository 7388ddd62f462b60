//! The command line: every subcommand and flag of `hema3n-edge` (clap definitions only).

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hema3n-edge",
    version,
    about = "HEMA3N Edge appliance daemon and administration CLI"
)]
pub struct Args {
    /// Base configuration file; drop-ins are read from `edge.d/` beside it.
    #[arg(long, global = true, env = "HEMA3N_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (defaults, file and drop-ins merged) and exit.
    #[arg(long, global = true)]
    pub print_config: bool,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand)]
pub enum Cmd {
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
        /// Host name of the appliance on the vehicle LAN, for the tablet's self-signed
        /// certificate (repeatable). Default `<appliance-id>.vehicle.lan`.
        #[arg(long, value_name = "NAME")]
        lan_name: Vec<String>,
    },
    /// Diagnose configuration, keys and database.
    Check {
        /// The HIPAA Security Rule self-check instead: one item per technical safeguard
        /// (45 CFR §164.312) plus backups and key ages, each pass/warn/fail with its evidence.
        /// Exit 0 all pass, 1 worst is warn, 2 worst is fail.
        #[arg(long)]
        compliance: bool,
        /// With --compliance: the report as JSON.
        #[arg(long, requires = "compliance")]
        json: bool,
    },
    /// Write a signed, encrypted backup of the database while the daemon runs.
    Backup {
        /// The backup file (written atomically, 0600).
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "out_dir",
            conflicts_with = "out_dir"
        )]
        out: Option<PathBuf>,
        /// Write `edge-<appliance>-<UTC time>.backup` into DIR instead (for a timer).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// With `--out-dir`: keep only the newest N backups of this appliance there.
        #[arg(long, value_name = "N", requires = "out_dir", value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a backup completely, then replace the database with it (the daemon must be
    /// stopped); the replaced database is kept beside it.
    Restore {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Only verify the file's signature and digest; change nothing.
        #[arg(long)]
        verify_only: bool,
    },
    /// Triage models: install a signed model, roll back, sign and verify packages.
    Model {
        #[command(subcommand)]
        cmd: ModelCmd,
    },
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
    /// Cases: open one, close one (its bundle is then sealed and queued for the cloud), export
    /// one as NEMSIS.
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
pub enum ModelCmd {
    /// Show the active, previous and factory models and the installed packages.
    Status,
    /// Verify a model package (signature against the pinned keys, every artifact); default:
    /// the active model.
    Verify {
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Verify a signed model package, copy it in, load-test it and make it active; the running
    /// daemon switches at its next triage. The active model stays as `previous`.
    Install {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Switch back to the previous model.
    Rollback,
    /// Create a model-signing key pair (for the build or release machine, never an appliance).
    Keygen {
        /// Directory for `model-signing.key` (0600) and `model-signing.pub`.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Sign a model package's manifest (after checking every artifact against it).
    Sign {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// The PEM private key from `model keygen`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Create a new territory key version and re-wrap data keys under it. On a sealed vehicle
    /// the new key is sealed at once and added to the daemon unit's credentials drop-in.
    Rotate {
        #[arg(long, conflicts_with = "if_due")]
        territory: Option<String>,
        /// Rotate every territory key older than keys.rotate_after_days (none: nothing to do),
        /// unless keys.auto_rotate is false. What hema3n-rotate-keys.timer runs.
        #[arg(long)]
        if_due: bool,
        /// Only create the version; leave re-wrapping to `keys rewrap`.
        #[arg(long)]
        no_rewrap: bool,
        /// On a sealed vehicle whose daemon runs: reload systemd and restart this unit so that
        /// it loads the new credential, then re-wrap (without it, re-wrapping waits for an
        /// admin, because the running daemon could not read re-wrapped data keys).
        #[arg(long, value_name = "UNIT")]
        restart_unit: Option<String>,
    },
    /// Re-wrap every data key of a territory under its current key version.
    Rewrap {
        #[arg(long)]
        territory: Option<String>,
    },
    /// Encrypt every key file of keys.dir into keys.credstore with systemd-creds (bound to
    /// this machine's TPM2 and/or credential secret), then destroy the plaintext. Run on the
    /// vehicle itself: hema3n-seal-keys.service does at first boot.
    Seal {
        /// systemd-creds --with-key: auto, host, tpm2, host+tpm2, …
        #[arg(long, default_value = "auto", value_name = "KEY")]
        with_key: String,
    },
    /// Stage a new appliance signing key and print its public key for the receiver
    /// (`hema3n-receiver appliances add-key`); `--activate` (daemon stopped) makes it current.
    RotateSigning {
        /// Write the staged public key (PEM) to FILE instead of stdout.
        #[arg(long, value_name = "FILE", conflicts_with = "activate")]
        out: Option<PathBuf>,
        #[arg(long)]
        activate: bool,
    },
    /// Re-encrypt the database under a new db.key (daemon stopped) and replace the key file
    /// or its sealed credential.
    RekeyDb,
    /// Rebuild every patient's blind indexes under a new index.key (daemon stopped) and replace
    /// the key file or its sealed credential.
    RotateIndex,
    /// A new audit MAC key for the entries to come (daemon stopped); the old one is kept for
    /// verifying the entries it MAC'd.
    RotateAudit,
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
    /// Create an agency escrow key pair: DIR/escrow.key (secret, keep offline) and
    /// DIR/escrow-public.key (give to `keys escrow --to`).
    EscrowKeygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Seal every key of this appliance to an escrow public key (HPKE) into FILE.
    Escrow {
        /// The escrow public key file (from `keys escrow-keygen`).
        #[arg(long, value_name = "PUBKEY")]
        to: PathBuf,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Open an escrow file with the escrow secret key and install its keys into `keys.dir`
    /// (refuses to overwrite a different key).
    Recover {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The escrow secret key file.
        #[arg(long, value_name = "FILE")]
        escrow_key: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum UsersCmd {
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
pub enum CasesCmd {
    /// Open a case (optionally with a chief complaint); prints its id.
    Open {
        #[arg(long)]
        territory: Option<String>,
        #[arg(long)]
        chief_complaint: Option<String>,
    },
    /// Close a case: the daemon seals its FHIR bundle and sends it to the cloud.
    Close { case: String },
    /// Write the case as a NEMSIS v3.5.1 EMSDataSet document (audited as a disclosure);
    /// exits 1 naming what the record lacks if NEMSIS requires it.
    ExportNemsis {
        case: String,
        /// File to write (created with mode 0600); default standard output.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Attach a file to a case (JPEG/PNG photo, PDF, DICOM; recognised by its bytes, photo
    /// metadata stripped, DICOM PHI split off); prints the attachment id and SHA-256.
    Attach {
        case: String,
        file: std::path::PathBuf,
        /// scene_photo, wound, ecg, signed_form, ultrasound or other.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        caption: Option<String>,
    },
    /// Write a stored attachment (audited as a view); `--deidentified` writes a DICOM object
    /// without its PHI.
    AttachmentExport {
        case: String,
        attachment: String,
        /// File to write (created with mode 0600).
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long)]
        deidentified: bool,
    },
    /// Write the hospital handoff document (PDF) of a case (audited as a disclosure).
    HandoffPdf {
        case: String,
        /// File to write (created with mode 0600).
        #[arg(long)]
        out: std::path::PathBuf,
        /// `mist` (trauma) or `sbar` (medical); default: what the record suggests.
        #[arg(long)]
        format: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum OutboxCmd {
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
pub enum AuditCmd {
    /// Verify the hash chain, MACs, signed checkpoints and head; exit 1 naming the first bad entry.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Sign a checkpoint over the current head now.
    Checkpoint,
    /// Entries about a patient or case, by a user, in a time window (newest first; audited).
    /// Times: a UTC date (2026-12-07), timestamp (2026-12-07T08:15:00Z) or Unix ms.
    Query(QueryArgs),
    /// Remove entries older than `audit.retention_days` that a signed checkpoint receipted by
    /// the cloud covers (the daemon does this every 10 min; audited).
    Prune {
        /// Say what would leave, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// A patient's accounting of disclosures: every read and disclosure of the patient's data
    /// (oldest first; the export is audited).
    Disclosures {
        #[arg(long)]
        patient: String,
        /// `csv` or `fhir` (a FHIR R4 Bundle of AuditEvents).
        #[arg(long, default_value = "csv")]
        format: String,
        /// Only entries of this territory.
        #[arg(long)]
        territory: Option<String>,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum DevicesCmd {
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
pub enum TriageCmd {
    /// Show the latest triage of a case with its reasons.
    Show {
        case: String,
        /// How many results to list (newest first).
        #[arg(long, default_value_t = 1)]
        last: usize,
    },
}

#[derive(clap::Args)]
pub struct SimArgs {
    /// On-board broker; default: mqtt.broker from the config.
    #[arg(long)]
    pub broker: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    #[arg(long, default_value = "sim-")]
    pub device_prefix: String,
    /// stable, sepsis, shock, hypoglycaemia, head-injury, or mixed (one per device in turn).
    #[arg(long, default_value = "mixed")]
    pub scenario: String,
    /// Milliseconds between packs of one device (0 = as fast as the broker accepts).
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Packs per device (0 = until --duration-secs, or forever).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Seconds a scenario takes from its start to its end state.
    #[arg(long, default_value_t = 600.0)]
    pub scenario_secs: f64,
    /// Readings per pack, 1-11.
    #[arg(long, default_value_t = 11)]
    pub readings_per_pack: usize,
    /// Comma-separated: bad-units, garbage, duplicates, clock-skew.
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<String>,
    /// Probability that a pack carries one of the faults.
    #[arg(long, default_value_t = 0.1)]
    pub fault_rate: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Broker credentials for every simulated device (user = device id when omitted).
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long, env = "HEMA3N_SIM_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

#[derive(Subcommand)]
pub enum DebugCmd {
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

/// `audit query`: its filters and output form.
#[derive(ClapArgs)]
pub struct QueryArgs {
    #[arg(long)]
    pub patient: Option<String>,
    #[arg(long)]
    pub case: Option<String>,
    /// A user id.
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub since: Option<String>,
    /// Exclusive.
    #[arg(long)]
    pub until: Option<String>,
    /// Only entries of this territory.
    #[arg(long)]
    pub territory: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// One JSON object per entry, one per line.
    #[arg(long)]
    pub json: bool,
}
