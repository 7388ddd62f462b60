//! D-Bus on a private dbus-daemon: a NetworkManager stand-in whose `Connectivity` stops and
//! starts cloud sync, and the properties, methods and signals of `org.hema3n.Edge1`.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::cloud::synced_appliance;
use futures_util::StreamExt;

/// A private bus; killed on drop.
struct DbusDaemon {
    child: std::process::Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dbus_daemon() -> DbusDaemon {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .arg(format!(
            "--address=unix:path={}",
            dir.path().join("bus").display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon (Debian package dbus) is installed by scripts/test.sh");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    DbusDaemon {
        child,
        address: line.trim().to_string(),
        _dir: dir,
    }
}

/// NetworkManager stand-in: the `Connectivity` property only.
struct FakeNm {
    connectivity: u32,
}

#[zbus::interface(name = "org.freedesktop.NetworkManager")]
impl FakeNm {
    #[zbus(property)]
    fn connectivity(&self) -> u32 {
        self.connectivity
    }
}

#[zbus::proxy(
    interface = "org.hema3n.Edge1",
    default_service = "org.hema3n.Edge1",
    default_path = "/org/hema3n/Edge1"
)]
trait Edge1 {
    #[zbus(property)]
    fn status(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn outbox_depth(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn alarms(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn model(&self) -> zbus::Result<String>;
    fn sync_now(&self) -> zbus::Result<()>;
    fn acknowledge_alarm(&self, id: i64) -> zbus::Result<bool>;
    #[zbus(signal)]
    fn alarm_raised(&self, id: i64, kind: &str, case_id: &str, device_id: &str)
    -> zbus::Result<()>;
}

async fn set_nm(conn: &zbus::Connection, v: u32) {
    let iface = conn
        .object_server()
        .interface::<_, FakeNm>("/org/freedesktop/NetworkManager")
        .await
        .unwrap();
    iface.get_mut().await.connectivity = v;
    iface
        .get()
        .await
        .connectivity_changed(iface.signal_emitter())
        .await
        .unwrap();
}

/// Polls `f` (uncached property reads) until it holds, for at most `secs`.
async fn until<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_manager_drives_sync_and_edge1_works() {
    let bus = dbus_daemon();
    let nm = zbus::connection::Builder::address(bus.address.as_str())
        .name("org.freedesktop.NetworkManager")
        .serve_at(
            "/org/freedesktop/NetworkManager",
            FakeNm { connectivity: 1 },
        )
        .build()
        .await
        .unwrap();

    let broker = Broker::start();
    let (a, receiver, _cloud, _pki) = synced_appliance(
        &broker,
        &format!(
            "[dbus]\naddress = \"{}\"\n[ingest]\ndevice_silent_secs = 1\n",
            bus.address
        ),
    );
    let _rx = receiver.spawn();
    let _daemon = a.start_daemon();

    let client = zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .unwrap();
    let edge = Edge1Proxy::builder(&client)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let mut alarms = edge.receive_alarm_raised().await.unwrap();
    until(30, "Edge1 on the bus", || async {
        edge.status().await.is_ok()
    })
    .await;
    assert!(!edge.model().await.unwrap().is_empty());

    // No connectivity: a closed case is sealed but waits.
    until(10, "sync offline", || async {
        edge.status().await.unwrap().contains("sync offline")
    })
    .await;
    let case = a.ok(&["cases", "open"]).trim().to_string();
    a.ok(&["cases", "close", &case]);
    until(30, "bundle sealed", || async {
        edge.outbox_depth().await.unwrap() >= 1
    })
    .await;
    assert_eq!(
        a.query_i64("SELECT count(*) FROM outbox WHERE state != 'queued'"),
        0,
        "nothing may leave while NetworkManager reports no connectivity"
    );
    edge.sync_now().await.unwrap();

    // Full connectivity: sync starts and the bundle is receipted.
    set_nm(&nm, 4).await;
    until(60, "bundle receipted", || async {
        a.query_i64("SELECT count(*) FROM outbox WHERE kind = 'bundle' AND state = 'receipted'")
            == 1
    })
    .await;
    assert_eq!(edge.outbox_depth().await.unwrap(), 0);
    // Connectivity lost again: sync stops.
    set_nm(&nm, 1).await;
    until(10, "sync paused", || async {
        edge.status().await.unwrap().contains("sync offline")
    })
    .await;
    assert!(a.daemon_log().contains("sync paused"));

    // A bound device that stays silent raises an alarm: signal, property, acknowledgement.
    a.ok(&["devices", "add", "mon-9"]);
    let open = a.ok(&["cases", "open"]).trim().to_string();
    a.ok(&["devices", "bind", "mon-9", &open]);
    let sig = tokio::time::timeout(Duration::from_secs(30), alarms.next())
        .await
        .expect("AlarmRaised within 30 s")
        .unwrap();
    let args = sig.args().unwrap();
    assert_eq!(
        (args.kind(), args.case_id(), args.device_id()),
        (&"device_silent", &open.as_str(), &"mon-9")
    );
    let id = *args.id();
    assert_eq!(edge.alarms().await.unwrap(), 1);
    assert!(edge.acknowledge_alarm(id).await.unwrap());
    assert!(!edge.acknowledge_alarm(id).await.unwrap(), "only once");
    assert_eq!(edge.alarms().await.unwrap(), 0);
    assert_eq!(
        a.query_i64(&format!(
            "SELECT count(*) FROM audit_log WHERE action = 'alarm.ack' AND resource = 'alarm/{id}'"
        )),
        1
    );
}
