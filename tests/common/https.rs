//! An HTTPS client for the tests and benchmarks that drive the real daemon's tablet API.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The sending half of one HTTP/1.1 connection.
pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One keep-alive HTTPS connection trusting `cert`.
pub async fn connect(port: u16, tls: &tokio_rustls::TlsConnector) -> Sender {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let s = tls.connect(name, tcp).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A keep-alive connection to the API on `port` trusting `cert`, signed in as `user` with
/// `pin`: the connection, the TLS connector (for more connections) and the session token.
pub async fn login(
    port: u16,
    cert: &std::path::Path,
    user: &str,
    pin: &str,
) -> (Sender, tokio_rustls::TlsConnector, String) {
    let tls =
        tokio_rustls::TlsConnector::from(hema3n_edge::tls::client_config(cert, None).unwrap());
    let mut s = connect(port, &tls).await;
    let v = json_req(
        &mut s,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(serde_json::json!({"user_id": user, "secret": pin})),
    )
    .await;
    let token = v["token"].as_str().expect("a session token").to_string();
    (s, tls, token)
}

/// One request: status and body.
pub async fn request(
    s: &mut Sender,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Bytes) {
    try_request(s, method, path, token, body).await.unwrap()
}

/// [`request`] that reports a broken connection (a killed server) instead of panicking.
pub async fn try_request(
    s: &mut Sender,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Bytes), hyper::Error> {
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("territory-id", "default");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Full::new(Bytes::from(serde_json::to_vec(&v).unwrap()))
        }
        None => Full::new(Bytes::new()),
    };
    s.ready().await?;
    let resp = s.send_request(b.body(body).unwrap()).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// One request that must succeed: its JSON body.
pub async fn json_req(
    s: &mut Sender,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Value {
    let (st, b) = request(s, method, path, token, body).await;
    assert!(
        (200..300).contains(&st),
        "{method} {path}: {st} {}",
        String::from_utf8_lossy(&b)
    );
    serde_json::from_slice(&b).unwrap_or(Value::Null)
}
