//! Provisioning that survives the trip to the vehicle: `scripts/provision.sh` fills an image root
//! on a provisioning host; on the vehicle — another machine, simulated by another systemd
//! credential secret (`SYSTEMD_CREDENTIAL_SECRET`, real `systemd-creds`) — first boot seals the
//! keys (what hema3n-seal-keys.service runs), the daemon reaches READY with the encrypted
//! credentials, and `check` and `audit verify` work through the documented admin path. The
//! provisioning host cannot open the sealed keys.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::broker::{Broker, wait_for};
use common::{BIN, Daemon};

const SECRETS: [&str; 8] = [
    "db.key",
    "index.key",
    "audit.key",
    "territory.default.v1.key",
    "appliance-signing.p8",
    "cloud-client.key",
    "api-tls.key",
    "mqtt.password",
];

struct Vehicle {
    image: PathBuf,
    secret: PathBuf,
}

impl Vehicle {
    fn etc(&self) -> PathBuf {
        self.image.join("etc/hema3n")
    }

    /// `hema3n-edge` from the image's config, as root on this vehicle (no systemd credentials
    /// directory: the admin path).
    fn cmd(&self, secret: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(self.etc().join("edge.toml"))
            .args(args)
            .env("SYSTEMD_CREDENTIAL_SECRET", secret)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("HEMA3N_CONFIG")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(&self.secret, args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn an_image_provisioned_elsewhere_is_sealed_at_first_boot_and_runs_on_the_vehicle() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("image");
    let host_secret = tmp.path().join("provisioning-host.secret");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/provision.sh");

    // On the provisioning host.
    let o = Command::new("bash")
        .arg(&script)
        .args(["--appliance-id", "AMB-T1", "--device", "mon-1", "--root"])
        .arg(&image)
        .arg("--bin")
        .arg(BIN)
        .env("SYSTEMD_CREDENTIAL_SECRET", &host_secret)
        .env_remove("HEMA3N_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "provision.sh: {log}");
    assert!(
        log.contains("seal them on the vehicle at first boot"),
        "{log}"
    );
    let v = Vehicle {
        image: image.clone(),
        secret: tmp.path().join("vehicle.secret"),
    };
    let keys = v.etc().join("keys");
    for k in SECRETS {
        assert_eq!(mode(&keys.join(k)), 0o600, "{k}");
    }
    let credstore = image.join("etc/credstore.encrypted/hema3n");
    assert!(
        !credstore.exists(),
        "nothing is encrypted for the wrong machine"
    );
    let dropin = std::fs::read_to_string(
        image.join("etc/systemd/system/hema3n-edge.service.d/credentials.conf"),
    )
    .unwrap();
    assert!(dropin.contains(
        "LoadCredentialEncrypted=territory.default.v1.key:/etc/credstore.encrypted/hema3n/territory.default.v1.key"
    ));

    // On the vehicle. The image's absolute paths are mapped into the temp root (a chroot needs
    // more than a test has), and the on-board broker checks the provisioned password file.
    let broker = Broker::start_with(&format!(
        "allow_anonymous false\npassword_file {}\n",
        image.join("etc/mosquitto/hema3n/passwd").display()
    ));
    std::fs::write(
        v.etc().join("edge.d/99-vehicle.toml"),
        format!(
            "data_dir = \"{root}/var/lib/hema3n\"\n[keys]\ndir = \"{root}/etc/hema3n/keys\"\ncredstore = \"{root}/etc/credstore.encrypted/hema3n\"\ncredentials_dropin = \"{root}/etc/systemd/system/hema3n-edge.service.d/credentials.conf\"\n[mqtt]\nbroker = \"{}\"\npassword_file = \"{root}/etc/mosquitto/hema3n/passwd\"\n[api]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{root}/etc/hema3n/api-cert.pem\"\n[triage]\nenabled = false\n",
            broker.url(),
            root = image.display()
        ),
    )
    .unwrap();
    // First boot: hema3n-seal-keys.service.
    let out = v.ok(&["keys", "seal"]);
    assert!(out.starts_with("sealed 8 keys"), "{out}");
    for k in SECRETS {
        assert!(!keys.join(k).exists(), "{k} plaintext left behind");
        assert!(credstore.join(k).is_file(), "{k} not sealed");
    }
    assert_eq!(mode(&credstore), 0o700);
    // A second boot finds nothing to seal (the unit's condition is false then, too).
    assert!(v.ok(&["keys", "seal"]).starts_with("nothing to seal"));

    // Bound to the vehicle: the provisioning host's secret opens none of them.
    let o = Command::new("systemd-creds")
        .args(["decrypt", "--name=db.key"])
        .arg(credstore.join("db.key"))
        .arg("-")
        .env("SYSTEMD_CREDENTIAL_SECRET", &host_secret)
        .output()
        .unwrap();
    assert!(!o.status.success() && o.stdout.is_empty());
    let o = v.cmd(&host_secret, &["check"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(err.contains("cannot decrypt credential"), "{err}");

    // The daemon starts from the sealed keys and reaches READY, connected to the broker with
    // the sealed broker password.
    let log_path = tmp.path().join("daemon.log");
    let mut daemon = Daemon(
        v.cmd(&v.secret, &["run"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(30, "READY and subscribed", || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(daemon.running(), "daemon exited:\n{log}");
        (log.contains(" ready ") && log.contains("subscribed to device topics")).then_some(())
    });
    // The admin path while it runs.
    let check = v.ok(&["check"]);
    assert!(check.contains("ok      database"), "{check}");
    assert!(v.ok(&["audit", "verify"]).starts_with("OK"));
    assert!(daemon.stop().success());

    // Automatic territory key rotation on the sealed vehicle (hema3n-rotate-keys.service runs
    // `keys rotate --if-due --restart-unit hema3n-edge.service`; here without systemd, with the
    // daemon stopped): the new version is sealed at once and the daemon's unit will load it.
    assert!(
        v.ok(&["keys", "rotate", "--if-due"])
            .starts_with("no territory key is due")
    );
    let now = v.etc().join("edge.d/98-due-now.toml");
    std::fs::write(&now, "[keys]\nrotate_after_days = 0\n").unwrap();
    let out = v.ok(&["keys", "rotate", "--if-due"]);
    std::fs::remove_file(&now).unwrap();
    let v2 = "territory.default.v2.key";
    assert!(
        out.contains("territory `default`: created key version v2")
            && out.contains("sealed 1 keys")
            && out.contains(&format!("the daemon loads credential {v2}"))
            && out.contains("territory `default`: re-wrapped 0 data keys under v2"),
        "{out}"
    );
    assert!(!keys.join(v2).exists(), "plaintext left behind");
    assert!(credstore.join(v2).is_file());
    let dropin = std::fs::read_to_string(
        image.join("etc/systemd/system/hema3n-edge.service.d/credentials.conf"),
    )
    .unwrap();
    assert!(
        dropin.lines().any(|l| l
            == format!(
                "LoadCredentialEncrypted={v2}:{}",
                credstore.join(v2).display()
            )),
        "{dropin}"
    );
    assert!(dropin.contains("LoadCredentialEncrypted=territory.default.v1.key:"));
    assert!(
        v.ok(&["keys", "rotate", "--if-due"])
            .starts_with("no territory key is due")
    );
    let check = v.ok(&["check"]);
    assert!(
        check.contains("ok      territory `default` key v2 is 0 days old"),
        "{check}"
    );
    assert!(v.ok(&["audit", "verify"]).starts_with("OK"));

    // Admin commands leave no decrypted key behind.
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .chain(std::fs::read_dir("/run").into_iter().flatten())
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("hema3n-admin.{}", daemon.id()))
        })
        .collect();
    assert!(leftovers.is_empty());
}
