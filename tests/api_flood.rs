//! The real daemon's HTTPS API over TLS on loopback under a connection flood and slow clients
//! (review #1, #2): the crew can still log in and `/healthz` answers; and lockout from another
//! source (review #3) over TLS, two loopback addresses standing for two hosts.

mod common;

use std::time::{Duration, Instant};

use common::Appliance;
use hema3n_edge::model::{Actor, Role};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const PIN: &str = "pin-4829";

struct Served {
    a: Appliance,
    daemon: common::Daemon,
    port: u16,
    tls: TlsConnector,
}

fn serve(dropin: &str) -> Served {
    let a = Appliance::init_with(&[("40-flood.toml", dropin)]);
    let phc = hema3n_edge::crypto::password::hash_secret(PIN).unwrap();
    a.open()
        .add_user(
            &Actor::cli(),
            "medic",
            "Medic",
            Role::Paramedic,
            "default",
            &phc,
        )
        .unwrap();
    let daemon = a.spawn_daemon();
    let port = a.api_port();
    let cert = a.dir.join("keys/api-cert.pem");
    let tls = TlsConnector::from(hema3n_edge::tls::client_config(&cert, None).unwrap());
    Served {
        a,
        daemon,
        port,
        tls,
    }
}

/// Raises this process's open-files limit (the daemon it spawns inherits it), as the daemon
/// does for itself.
fn raise_nofile(need: u64) {
    let n = hema3n_edge::host::raise_open_files_limit().unwrap();
    assert!(
        n >= need,
        "this test needs {need} open files; the hard limit is {n}"
    );
}

async fn tls(s: &Served) -> TlsStream<tokio::net::TcpStream> {
    tls_as(s, "localhost").await.unwrap()
}

/// A TLS connection from the loopback address `from` (127.0.0.0/8: each is another source).
async fn tls_from(s: &Served, from: [u8; 4]) -> TlsStream<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(std::net::SocketAddr::from((from, 0))).unwrap();
    let tcp = sock
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], s.port)))
        .await
        .unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    s.tls.connect(name, tcp).await.unwrap()
}

/// A TLS connection that checks the server's certificate against `name`.
async fn tls_as(s: &Served, name: &str) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port)).await?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    s.tls.connect(name, tcp).await
}

/// One request on a fresh connection: (status, body).
async fn request(s: &Served, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    request_from(s, [127, 0, 0, 1], method, path, body).await
}

/// [`request`] from the loopback address `from`.
async fn request_from(
    s: &Served,
    from: [u8; 4],
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let io = tls_from(s, from).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).to_string())
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crew_logs_in_while_slow_bodies_and_a_thousand_idle_connections_are_held() {
    raise_nofile(4096);
    // Timeouts long enough that every attacking connection is still held during the login.
    let s = serve("[api]\nheader_timeout_secs = 120\nbody_timeout_secs = 120\n");
    // 64 slow bodies: headers promise 60,000 bytes, one arrives.
    let mut slow = Vec::new();
    for _ in 0..64 {
        let mut c = tls(&s).await;
        c.write_all(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{",
        )
        .await
        .unwrap();
        c.flush().await.unwrap();
        slow.push(c);
    }
    // 1,000 idle TLS connections that never send a request.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(tls(&s).await);
    }
    let pid = s.daemon.id();
    assert!(open_fds(pid) >= 1064, "the daemon holds every connection");
    let t = Instant::now();
    let (status, body) = request(
        &s,
        "POST",
        "/api/v1/auth/login",
        Some(&format!(r#"{{"user_id":"medic","secret":"{PIN}"}}"#)),
    )
    .await;
    let took = t.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(took < Duration::from_secs(1), "login took {took:?}");
    let (status, body) = request(&s, "GET", "/healthz", None).await;
    assert_eq!(status, 200, "{body}");
    eprintln!("crew login under flood: {} ms", took.as_millis());
    // Still held: the attack was in place during the login.
    assert!(open_fds(pid) >= 1064);
    drop(slow);
    drop(idle);
    let mut d = s.daemon;
    assert!(d.running(), "{}", s.a.daemon_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_trickled_bodies_are_timed_out() {
    let s = serve("[api]\nheader_timeout_secs = 1\nbody_timeout_secs = 1\n");
    // The tablet reaches the appliance by its vehicle LAN name, which the certificate names
    // (review #21); a name it does not hold fails verification.
    assert!(tls_as(&s, "hema3n-dev.vehicle.lan").await.is_ok());
    assert!(tls_as(&s, "other.vehicle.lan").await.is_err());
    // An idle connection is closed by the server.
    let mut c = tls(&s).await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("closed by the server within the header timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // A body that never completes gets 408 REQUEST_TIMEOUT.
    let mut c = tls(&s).await;
    c.write_all(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("REQUEST_TIMEOUT"), "{text}");
    let mut d = s.daemon;
    assert!(d.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pins_from_another_source_do_not_lock_the_crew_out_over_tls() {
    // Review #3 against the real daemon: two loopback addresses are two sources.
    let s = serve("");
    let (tablet, attacker) = ([127, 0, 0, 10], [127, 0, 0, 66]);
    let login = |secret: &str| format!(r#"{{"user_id":"medic","secret":"{secret}"}}"#);
    let (status, body) =
        request_from(&s, tablet, "POST", "/api/v1/auth/login", Some(&login(PIN))).await;
    assert_eq!(status, 200, "{body}");
    let mut refused = 0;
    for _ in 0..20 {
        let (status, _) = request_from(
            &s,
            attacker,
            "POST",
            "/api/v1/auth/login",
            Some(&login("000000")),
        )
        .await;
        assert!(status == 401 || status == 429, "{status}");
        refused += usize::from(status == 429);
    }
    assert!(refused > 0, "the attacker was never throttled");
    let (status, body) =
        request_from(&s, tablet, "POST", "/api/v1/auth/login", Some(&login(PIN))).await;
    assert_eq!(status, 200, "the crew's own tablet was locked out: {body}");
    let mut d = s.daemon;
    assert!(d.running());
}
