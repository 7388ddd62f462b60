//! Key escrow (`keys escrow`, `keys recover`): the appliance's key files sealed to an agency's
//! X25519 escrow key with HPKE base mode — the envelope suite (DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, AES-256-GCM), its own `info` — so a backup can be restored on a replacement
//! appliance when the vehicle's keys are gone. The cleartext header (format, appliance, time,
//! escrow key id, file names) is the associated data; the file contents are only inside.
//!
//! File: `H3NESC01`, u16 BE header length, header JSON, 32-byte encapsulated key, ciphertext.
//! Plaintext: per key file, u16 BE name length, name, u32 BE length, content.

use super::hpke_aead::RingAesGcm256 as AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

type Kem = X25519HkdfSha256;

pub const ESCROW_MAGIC: &[u8; 8] = b"H3NESC01";
pub const ESCROW_FORMAT: &str = "hema3n-key-escrow/1";
const INFO: &[u8] = b"hema3n/v1 key escrow";
const ENC_LEN: usize = 32;

/// Why an escrow file or key was refused.
#[derive(Debug, thiserror::Error)]
pub enum EscrowError {
    #[error("not a HEMA3N key escrow file ({0})")]
    Format(String),
    #[error("{0} is not an X25519 key (32 bytes, hex)")]
    BadKey(&'static str),
    #[error("the escrow file is sealed to escrow key {found}, this escrow key is {expected}")]
    WrongKey { found: String, expected: String },
    #[error("the escrow file does not open: changed, or not sealed to this key")]
    Open,
    #[error("sealing failed")]
    Seal,
}

/// The cleartext header of an escrow file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscrowHeader {
    pub format: String,
    pub appliance_id: String,
    pub created_at_ms: i64,
    /// SHA-256 of the escrow public key, first 8 bytes, hex.
    pub escrow_key_id: String,
    /// The key files inside, by name.
    pub files: Vec<String>,
}

/// One key file: its name and content.
pub type KeyFile = (String, Zeroizing<Vec<u8>>);

/// Id of an escrow public key: SHA-256, first 8 bytes, hex.
pub fn escrow_key_id(public: &[u8; 32]) -> String {
    hex::encode(&super::sha256(public)[..8])
}

/// A new escrow key pair: (secret, public), raw 32 bytes each.
pub fn generate() -> (Zeroizing<[u8; 32]>, [u8; 32]) {
    use rand_core::TryRngCore;
    let (sk, pk) = Kem::gen_keypair(&mut rand_core::OsRng.unwrap_err());
    let mut raw = Zeroizing::new([0u8; 32]);
    raw.copy_from_slice(&sk.to_bytes());
    let mut public = [0u8; 32];
    public.copy_from_slice(&pk.to_bytes());
    (raw, public)
}

/// The public key of an escrow secret key.
pub fn public_of(secret: &[u8; 32]) -> Result<[u8; 32], EscrowError> {
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(secret)
        .map_err(|_| EscrowError::BadKey("the escrow secret key"))?;
    let mut public = [0u8; 32];
    public.copy_from_slice(&Kem::sk_to_pk(&sk).to_bytes());
    Ok(public)
}

/// Seals `files` to the escrow key `public`.
pub fn seal(
    appliance_id: &str,
    created_at_ms: i64,
    files: &[KeyFile],
    public: &[u8; 32],
) -> Result<Vec<u8>, EscrowError> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(public)
        .map_err(|_| EscrowError::BadKey("the escrow public key"))?;
    let header = EscrowHeader {
        format: ESCROW_FORMAT.into(),
        appliance_id: appliance_id.into(),
        created_at_ms,
        escrow_key_id: escrow_key_id(public),
        files: files.iter().map(|(n, _)| n.clone()).collect(),
    };
    let json = serde_json::to_vec(&header).expect("header serialises");
    let mut aad = ESCROW_MAGIC.to_vec();
    aad.extend_from_slice(&(json.len() as u16).to_be_bytes());
    aad.extend_from_slice(&json);
    let mut plain = Zeroizing::new(Vec::new());
    for (name, content) in files {
        plain.extend_from_slice(&(name.len() as u16).to_be_bytes());
        plain.extend_from_slice(name.as_bytes());
        plain.extend_from_slice(&(content.len() as u32).to_be_bytes());
        plain.extend_from_slice(content);
    }
    use rand_core::TryRngCore;
    let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &pk,
        INFO,
        &plain,
        &aad,
        &mut rand_core::OsRng.unwrap_err(),
    )
    .map_err(|_| EscrowError::Seal)?;
    let mut out = aad;
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&ct);
    Ok(out)
}

/// The header of an escrow file, read without opening it.
pub fn header(bytes: &[u8]) -> Result<(EscrowHeader, usize), EscrowError> {
    let bad = |w: &str| EscrowError::Format(w.into());
    if bytes.len() < 10 || &bytes[..8] != ESCROW_MAGIC {
        return Err(bad("no H3NESC01 header"));
    }
    let len = u16::from_be_bytes([bytes[8], bytes[9]]) as usize;
    let end = 10 + len;
    if bytes.len() < end + ENC_LEN {
        return Err(bad("cut short"));
    }
    let h: EscrowHeader =
        serde_json::from_slice(&bytes[10..end]).map_err(|e| bad(&format!("header: {e}")))?;
    if h.format != ESCROW_FORMAT {
        return Err(bad(&format!("format `{}`", h.format)));
    }
    Ok((h, end))
}

/// Opens an escrow file with the escrow secret key.
pub fn open(bytes: &[u8], secret: &[u8; 32]) -> Result<(EscrowHeader, Vec<KeyFile>), EscrowError> {
    let (h, end) = header(bytes)?;
    let ours = escrow_key_id(&public_of(secret)?);
    if h.escrow_key_id != ours {
        return Err(EscrowError::WrongKey {
            found: h.escrow_key_id,
            expected: ours,
        });
    }
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(secret)
        .map_err(|_| EscrowError::BadKey("the escrow secret key"))?;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&bytes[end..end + ENC_LEN])
        .map_err(|_| EscrowError::Open)?;
    let plain = Zeroizing::new(
        hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
            &OpModeR::Base,
            &sk,
            &enc,
            INFO,
            &bytes[end + ENC_LEN..],
            &bytes[..end],
        )
        .map_err(|_| EscrowError::Open)?,
    );
    let mut files = Vec::new();
    let mut rest = plain.as_slice();
    let mut take = |n: usize| -> Result<&[u8], EscrowError> {
        if rest.len() < n {
            return Err(EscrowError::Format("inner list cut short".into()));
        }
        let (a, b) = rest.split_at(n);
        rest = b;
        Ok(a)
    };
    for want in &h.files {
        let nl = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        let name = String::from_utf8_lossy(take(nl)?).into_owned();
        let cl = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let content = Zeroizing::new(take(cl)?.to_vec());
        if &name != want {
            return Err(EscrowError::Format(format!(
                "inner file `{name}` where the header lists `{want}`"
            )));
        }
        files.push((name, content));
    }
    Ok((h, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let (secret, public) = generate();
        assert_eq!(public_of(&secret).unwrap(), public);
        let files = vec![
            ("db.key".to_string(), Zeroizing::new(b"aa".to_vec())),
            ("index.key".to_string(), Zeroizing::new(vec![7u8; 40])),
        ];
        let sealed = seal("amb-1", 5, &files, &public).unwrap();
        let (h, got) = open(&sealed, &secret).unwrap();
        assert_eq!(h.appliance_id, "amb-1");
        assert_eq!(h.files, vec!["db.key", "index.key"]);
        assert_eq!(got[1].1.as_slice(), &[7u8; 40][..]);
        // Any changed byte, in the header (associated data) or the ciphertext, fails.
        for at in [12, sealed.len() / 2, sealed.len() - 1] {
            let mut b = sealed.clone();
            b[at] ^= 1;
            assert!(open(&b, &secret).is_err(), "byte {at}");
        }
        let (other, _) = generate();
        assert!(matches!(
            open(&sealed, &other),
            Err(EscrowError::WrongKey { .. })
        ));
    }
}
