//! TLS on rustls with the `ring` provider (no aws-lc, cross-compiles without target
//! libraries). The only module that imports `rustls`, `tokio-rustls` and `rcgen`.
//!
//! - Client: the cloud broker (server authenticated by a pinned CA; the appliance authenticates
//!   with its certificate when one is configured: mTLS), also used by the receiver; and the
//!   receiver's shared PostgreSQL store ([`PgTls`]: the server's certificate verified against
//!   its CA and host name).
//! - Server: the crew tablet API (TLS 1.2/1.3, HTTP/1.1 via ALPN), and the self-signed
//!   certificate `init` makes for a development appliance.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The client configuration handed to the MQTT transport.
pub type ClientConfig = Arc<rustls::ClientConfig>;

/// Why a TLS configuration could not be built. Recovery: fix the named file and restart.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {why}")]
    Read {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration rejected: {0}")]
    Config(String),
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let v: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Read {
            what,
            path: path.into(),
            why: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            what,
            path: path.into(),
            why: e.to_string(),
        })?;
    if v.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(v)
}

/// A client configuration trusting only the CA(s) in `ca_file`, optionally presenting the
/// certificate chain in `client_cert` with the PEM private key `client_key` (mTLS).
pub fn client_config(
    ca_file: &Path,
    client: Option<(&Path, &[u8])>,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("CA certificate", ca_file)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Config(format!("CA {}: {e}", ca_file.display())))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let cfg = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key_pem)) => {
            let chain = certs("client certificate", cert)?;
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Read {
                what: "client key",
                path: PathBuf::from("cloud-client.key"),
                why: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Config(e.to_string()))?
        }
    };
    Ok(Arc::new(cfg))
}

/// TLS for an MQTT broker: `None` for a plain one; otherwise trust only `ca_file` and, when a
/// client certificate is configured, present it with the PEM key `read_key` returns (mTLS).
pub fn for_broker<E: From<TlsError>>(
    tls: bool,
    ca_file: Option<&Path>,
    client_cert: Option<&Path>,
    read_key: impl FnOnce() -> Result<Zeroizing<Vec<u8>>, E>,
) -> Result<Option<ClientConfig>, E> {
    let (true, Some(ca)) = (tls, ca_file) else {
        return Ok(None);
    };
    let key = client_cert.map(|_| read_key()).transpose()?;
    let client = client_cert.zip(key.as_deref().map(Vec::as_slice));
    Ok(Some(client_config(ca, client)?))
}

/// Accepts TLS connections for the tablet API.
pub type Acceptor = tokio_rustls::TlsAcceptor;
/// A server-side TLS stream.
pub type ServerStream<S> = tokio_rustls::server::TlsStream<S>;

/// When the first certificate in the PEM file `path` expires (its `notAfter`), in ms since the
/// epoch: for the expiry warnings of `check`, `/metrics` and the `certificate_expiring` alarm.
pub fn certificate_not_after_ms(path: &Path) -> Result<i64, TlsError> {
    let c = certs("certificate", path)?;
    der_not_after_ms(&c[0]).ok_or_else(|| TlsError::Read {
        what: "certificate",
        path: path.into(),
        why: "its validity does not decode".into(),
    })
}

/// One DER element: (tag, content, what follows).
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l0, mut b) = b.split_first()?;
    let len = if l0 < 0x80 {
        usize::from(l0)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n].iter().fold(0usize, |a, &x| a << 8 | usize::from(x));
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// `tbsCertificate.validity.notAfter` of an X.509 certificate (RFC 5280 §4.1): UTCTime
/// (years 1950-2049) or GeneralizedTime, always in UTC (`Z`).
fn der_not_after_ms(cert: &[u8]) -> Option<i64> {
    let (_, cert, _) = der_tlv(cert)?;
    let (_, mut tbs, _) = der_tlv(cert)?;
    let (tag, _, rest) = der_tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest; // [0] EXPLICIT version
    }
    let (_, _, rest) = der_tlv(tbs)?; // serialNumber
    let (_, _, rest) = der_tlv(rest)?; // signature
    let (_, _, rest) = der_tlv(rest)?; // issuer
    let (_, validity, _) = der_tlv(rest)?;
    let (_, _, rest) = der_tlv(validity)?; // notBefore
    let (tag, t, _) = der_tlv(rest)?;
    let s = std::str::from_utf8(t).ok()?.strip_suffix('Z')?;
    let (year, s) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy: i64 = s[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        (0x18, 14) => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| s.get(i..i + 2)?.parse::<i64>().ok();
    let days = crate::model::days_from_civil(year, n(0)?, n(2)?);
    Some(((days * 24 + n(4)?) * 60 + n(6)?) * 60_000 + n(8)? * 1000)
}

/// A server configuration presenting the chain in `cert_file` with the PEM key `key_pem`.
pub fn server_acceptor(cert_file: &Path, key_pem: &[u8]) -> Result<Acceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("API certificate", cert_file)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Read {
        what: "API key",
        path: PathBuf::from("api-tls.key"),
        why: e.to_string(),
    })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("{}: {e}", cert_file.display())))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// A self-signed certificate (PEM) and its PEM private key for `names` (DNS names or IPs).
pub fn self_signed(names: &[String]) -> Result<(String, Zeroizing<String>), TlsError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Config(format!("cannot make a self-signed certificate: {e}")))?;
    Ok((ck.cert.pem(), Zeroizing::new(ck.key_pair.serialize_pem())))
}

/// TLS for the receiver's PostgreSQL connection (`sslmode=require` with the server's
/// certificate and host name verified against the configured CA, i.e. `verify-full`).
#[derive(Clone)]
pub struct PgTls(pub ClientConfig);

/// One PostgreSQL TLS handshake, for the host name the connection was opened to.
pub struct PgTlsConnect {
    config: ClientConfig,
    name: rustls::pki_types::ServerName<'static>,
}

/// An established PostgreSQL TLS stream.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> postgres::tls::MakeTlsConnect<S> for PgTls
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, TlsError> {
        let name = rustls::pki_types::ServerName::try_from(domain.to_string())
            .map_err(|e| TlsError::Config(format!("PostgreSQL host `{domain}`: {e}")))?;
        Ok(PgTlsConnect {
            config: self.0.clone(),
            name,
        })
    }
}

impl<S> postgres::tls::TlsConnect<S> for PgTlsConnect
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<PgTlsStream<S>>> + Send>,
    >;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move { connector.connect(self.name, stream).await.map(PgTlsStream) })
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncRead
    for PgTlsStream<S>
{
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite
    for PgTlsStream<S>
{
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> postgres::tls::TlsStream
    for PgTlsStream<S>
{
    /// No channel binding: the server is authenticated by its certificate instead.
    fn channel_binding(&self) -> postgres::tls::ChannelBinding {
        postgres::tls::ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate valid until `y-m-d` (rcgen writes UTCTime before 2050 and
    /// GeneralizedTime from 2050 on, as RFC 5280 requires).
    fn cert_until(y: i32, m: u8, d: u8) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["x.test".to_string()]).unwrap();
        p.not_after = rcgen::date_time_ymd(y, m, d);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn not_after_reads_utc_and_generalized_time() {
        for (y, m, d) in [(2027, 1, 31), (1999, 12, 31), (2049, 6, 1), (2051, 3, 1)] {
            let want = crate::model::days_from_civil(y.into(), m.into(), d.into()) * 86_400_000;
            assert_eq!(
                der_not_after_ms(&cert_until(y, m, d)),
                Some(want),
                "{y}-{m}-{d}"
            );
        }
        let c = cert_until(2030, 2, 2);
        assert_eq!(
            der_not_after_ms(&c[..c.len() / 3]),
            None,
            "a cut certificate"
        );
        assert_eq!(der_not_after_ms(b"\x30\x84\xff\xff\xff\xff"), None);
    }
}
