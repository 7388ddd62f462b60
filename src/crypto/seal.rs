//! Sealed bundle envelopes and signed receipts (format v1, specified byte by byte in
//! `docs/bundle-format.md`). The only module that imports `hpke`.
//!
//! An envelope is signed by the appliance (ES256) and encrypted with HPKE base mode
//! (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) to the cloud receiver's key. The
//! cleartext header (appliance id, bundle id, sequence, kind, key ids) is the HPKE associated
//! data, so it cannot be moved onto another ciphertext, and the signature covers header,
//! encapsulated key and ciphertext, so a receiver rejects a forgery before decrypting.
//!
//! A receipt is the receiver's ES256-signed statement that it stored the bundle with that id
//! and exactly that envelope (SHA-256).

use super::hpke_aead::RingAesGcm256 as AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};

use super::sign::{PublicKey, SigningKey};

/// Envelope magic ("H3NB": HEMA3N bundle).
pub const ENVELOPE_MAGIC: &[u8; 4] = b"H3NB";
/// Receipt magic ("H3NR": HEMA3N receipt).
pub const RECEIPT_MAGIC: &[u8; 4] = b"H3NR";
/// The only format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// RFC 9180 identifiers of the one suite v1 uses.
pub const KEM_ID: u16 = 0x0020;
pub const KDF_ID: u16 = 0x0001;
pub const AEAD_ID: u16 = 0x0002;
/// HPKE `info` for every v1 envelope.
pub const HPKE_INFO: &[u8] = b"hema3n/v1 bundle";
/// Largest plaintext a v1 envelope may carry (a FHIR case bundle is far smaller).
pub const MAX_PLAINTEXT: usize = 16 * 1024 * 1024;
/// Bytes of an ES256 signature (r || s).
pub const SIG_LEN: usize = 64;
/// Bytes of an encapsulated X25519 key.
pub const ENC_LEN: usize = 32;
/// Fixed part of the header before the appliance id.
const FIXED_HEADER: usize = 61;

/// DHKEM(X25519, HKDF-SHA256); decapsulation through OpenSSL (`hpke_kem`).
type Kem = super::hpke_kem::X25519Kem;

/// The operating system's CSPRNG; a failure to read it panics (nothing sensible can continue).
fn os_rng() -> rand_core::UnwrapErr<rand_core::OsRng> {
    use rand_core::TryRngCore;
    rand_core::OsRng.unwrap_err()
}

/// Why an envelope or receipt was refused. `code()` is the stable name used in logs, metrics and
/// the receiver's reject table. Recovery: none for that message; it is never receipted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("envelope is truncated or its lengths are inconsistent ({0})")]
    Truncated(&'static str),
    #[error("not a HEMA3N envelope or receipt (bad magic)")]
    BadMagic,
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    #[error("unsupported HPKE suite kem={kem:#06x} kdf={kdf:#06x} aead={aead:#06x}")]
    UnsupportedSuite { kem: u16, kdf: u16, aead: u16 },
    #[error("unknown bundle kind {0}")]
    BadKind(u8),
    #[error("appliance id is not [A-Za-z0-9._-]{{1,64}}")]
    BadApplianceId,
    #[error("signature does not verify")]
    BadSignature,
    #[error("sealed to recipient key {found}, not to this receiver's key {expected}")]
    WrongRecipient { found: String, expected: String },
    #[error("HPKE open failed (wrong key or corrupted ciphertext)")]
    DecryptFailed,
    #[error("plaintext of {0} bytes exceeds the v1 limit")]
    TooLarge(usize),
    #[error("bad key: {0}")]
    BadKey(&'static str),
    #[error("HPKE seal failed")]
    SealFailed,
    #[error("signing failed")]
    Sign,
}

impl SealError {
    /// Stable reject code.
    pub fn code(&self) -> &'static str {
        match self {
            SealError::Truncated(_) => "ENVELOPE_TRUNCATED",
            SealError::BadMagic => "BAD_MAGIC",
            SealError::UnsupportedVersion(_) => "UNSUPPORTED_VERSION",
            SealError::UnsupportedSuite { .. } => "UNSUPPORTED_SUITE",
            SealError::BadKind(_) => "BAD_KIND",
            SealError::BadApplianceId => "BAD_APPLIANCE_ID",
            SealError::BadSignature => "BAD_SIGNATURE",
            SealError::WrongRecipient { .. } => "WRONG_RECIPIENT",
            SealError::DecryptFailed => "DECRYPT_FAILED",
            SealError::TooLarge(_) => "TOO_LARGE",
            SealError::BadKey(_) => "BAD_KEY",
            SealError::SealFailed => "SEAL_FAILED",
            SealError::Sign => "SIGN_FAILED",
        }
    }
}

/// What an envelope carries (its header byte). Sending order is [`BundleKind::priority`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BundleKind {
    /// Hospital pre-alert: triage summary as soon as a case first reaches ESI 1-2.
    Prealert = 1,
    /// The full case bundle, sealed when the case is closed.
    Bundle = 2,
    /// Appliance health (no PHI).
    Telemetry = 3,
    /// One part (at most [`ATTACHMENT_PART_BYTES`] of content) of an attachment.
    Attachment = 4,
}

/// Content bytes one attachment envelope carries at most, so that no envelope exceeds 1 MiB.
pub const ATTACHMENT_PART_BYTES: usize = 768 * 1024;

impl BundleKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Prealert),
            2 => Some(Self::Bundle),
            3 => Some(Self::Telemetry),
            4 => Some(Self::Attachment),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prealert => "prealert",
            Self::Bundle => "bundle",
            Self::Telemetry => "telemetry",
            Self::Attachment => "attachment",
        }
    }
    /// Sending order (lower first): pre-alerts, case bundles, attachments, telemetry.
    pub fn priority(self) -> i64 {
        match self {
            Self::Prealert => 1,
            Self::Bundle => 2,
            Self::Attachment => 3,
            Self::Telemetry => 4,
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "prealert" => Some(Self::Prealert),
            "bundle" => Some(Self::Bundle),
            "telemetry" => Some(Self::Telemetry),
            "attachment" => Some(Self::Attachment),
            _ => None,
        }
    }
}

/// 8-byte key id: the first 8 bytes of SHA-256 over the raw public key bytes.
pub fn key_id8(public: &[u8]) -> [u8; 8] {
    let h = super::sha256(public);
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[..8]);
    id
}

/// The receiver's X25519 public key (raw 32 bytes), as imported by appliances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientPublicKey([u8; 32]);

impl RecipientPublicKey {
    pub fn from_bytes(b: &[u8]) -> Result<Self, SealError> {
        let a: [u8; 32] = b
            .try_into()
            .map_err(|_| SealError::BadKey("X25519 public key must be 32 bytes"))?;
        <Kem as hpke::Kem>::PublicKey::from_bytes(&a)
            .map_err(|_| SealError::BadKey("not an X25519 public key"))?;
        Ok(Self(a))
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn key_id(&self) -> [u8; 8] {
        key_id8(&self.0)
    }
}

/// The receiver's X25519 private key (raw 32 bytes, stored 0600).
pub struct RecipientSecretKey {
    sk: <Kem as hpke::Kem>::PrivateKey,
    public: RecipientPublicKey,
}

impl RecipientSecretKey {
    /// A fresh key; returns it with its raw bytes for storage.
    pub fn generate() -> (Self, zeroize::Zeroizing<[u8; 32]>) {
        let (sk, _) = Kem::gen_keypair(&mut os_rng());
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        raw.copy_from_slice(&sk.to_bytes());
        (Self::from_bytes(&raw).expect("fresh key parses"), raw)
    }

    pub fn from_bytes(b: &[u8; 32]) -> Result<Self, SealError> {
        let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(b)
            .map_err(|_| SealError::BadKey("not an X25519 private key"))?;
        let pk = Kem::sk_to_pk(&sk);
        let public = RecipientPublicKey(pk.to_bytes().into());
        Ok(Self { sk, public })
    }

    pub fn public(&self) -> &RecipientPublicKey {
        &self.public
    }
}

/// The cleartext fields of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHeader {
    pub kind: BundleKind,
    pub bundle_id: [u8; 16],
    pub seq: u64,
    pub created_at_ms: u64,
    pub recipient_key_id: [u8; 8],
    pub signer_key_id: [u8; 8],
    pub appliance_id: String,
}

/// `[A-Za-z0-9._-]{1,64}`, the same rule as device ids.
pub fn valid_appliance_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl EnvelopeHeader {
    fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(FIXED_HEADER + self.appliance_id.len());
        h.extend_from_slice(ENVELOPE_MAGIC);
        h.push(FORMAT_VERSION);
        h.push(self.kind as u8);
        h.extend_from_slice(&KEM_ID.to_be_bytes());
        h.extend_from_slice(&KDF_ID.to_be_bytes());
        h.extend_from_slice(&AEAD_ID.to_be_bytes());
        h.extend_from_slice(&self.bundle_id);
        h.extend_from_slice(&self.seq.to_be_bytes());
        h.extend_from_slice(&self.created_at_ms.to_be_bytes());
        h.extend_from_slice(&self.recipient_key_id);
        h.extend_from_slice(&self.signer_key_id);
        h.push(self.appliance_id.len() as u8);
        h.extend_from_slice(self.appliance_id.as_bytes());
        h
    }
}

/// A syntactically valid envelope, not yet verified or opened.
#[derive(Debug)]
pub struct ParsedEnvelope<'a> {
    pub header: EnvelopeHeader,
    header_bytes: &'a [u8],
    signed: &'a [u8],
    enc: &'a [u8],
    ciphertext: &'a [u8],
    signature: &'a [u8],
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Parses the structure of an envelope (no cryptography yet).
pub fn parse(env: &[u8]) -> Result<ParsedEnvelope<'_>, SealError> {
    if env.len() < 4 || &env[..4] != ENVELOPE_MAGIC {
        return Err(if env.len() < 4 {
            SealError::Truncated("shorter than the magic")
        } else {
            SealError::BadMagic
        });
    }
    if env.len() < FIXED_HEADER {
        return Err(SealError::Truncated("shorter than the fixed header"));
    }
    if env[4] != FORMAT_VERSION {
        return Err(SealError::UnsupportedVersion(env[4]));
    }
    let kind = BundleKind::from_u8(env[5]).ok_or(SealError::BadKind(env[5]))?;
    let (kem, kdf, aead) = (be_u16(&env[6..]), be_u16(&env[8..]), be_u16(&env[10..]));
    if (kem, kdf, aead) != (KEM_ID, KDF_ID, AEAD_ID) {
        return Err(SealError::UnsupportedSuite { kem, kdf, aead });
    }
    let mut bundle_id = [0u8; 16];
    bundle_id.copy_from_slice(&env[12..28]);
    let seq = be_u64(&env[28..]);
    let created_at_ms = be_u64(&env[36..]);
    let mut recipient_key_id = [0u8; 8];
    recipient_key_id.copy_from_slice(&env[44..52]);
    let mut signer_key_id = [0u8; 8];
    signer_key_id.copy_from_slice(&env[52..60]);
    let l = env[60] as usize;
    let h = FIXED_HEADER + l;
    if env.len() < h + ENC_LEN + 4 {
        return Err(SealError::Truncated("header or encapsulated key cut short"));
    }
    let appliance_id = std::str::from_utf8(&env[FIXED_HEADER..h])
        .ok()
        .filter(|s| valid_appliance_id(s))
        .ok_or(SealError::BadApplianceId)?
        .to_string();
    let enc = &env[h..h + ENC_LEN];
    let n = u32::from_be_bytes(env[h + ENC_LEN..h + ENC_LEN + 4].try_into().expect("4")) as usize;
    let ct_start = h + ENC_LEN + 4;
    if n < 16 || n - 16 > MAX_PLAINTEXT {
        return Err(SealError::Truncated("ciphertext length out of range"));
    }
    if env.len() != ct_start + n + SIG_LEN {
        return Err(SealError::Truncated(
            "total length does not match the ciphertext length",
        ));
    }
    Ok(ParsedEnvelope {
        header: EnvelopeHeader {
            kind,
            bundle_id,
            seq,
            created_at_ms,
            recipient_key_id,
            signer_key_id,
            appliance_id,
        },
        header_bytes: &env[..h],
        signed: &env[..ct_start + n],
        enc,
        ciphertext: &env[ct_start..ct_start + n],
        signature: &env[ct_start + n..],
    })
}

impl ParsedEnvelope<'_> {
    /// Checks the appliance signature with the key registered for `header.appliance_id`.
    pub fn verify(&self, appliance_key: &PublicKey) -> Result<(), SealError> {
        if key_id8(&appliance_key.0) != self.header.signer_key_id {
            return Err(SealError::BadSignature);
        }
        appliance_key
            .verify(self.signed, self.signature)
            .map_err(|_| SealError::BadSignature)
    }

    /// Decrypts. Call [`verify`](Self::verify) first.
    pub fn open(&self, key: &RecipientSecretKey) -> Result<Vec<u8>, SealError> {
        let ours = key.public().key_id();
        if ours != self.header.recipient_key_id {
            return Err(SealError::WrongRecipient {
                found: hex::encode(self.header.recipient_key_id),
                expected: hex::encode(ours),
            });
        }
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(self.enc)
            .map_err(|_| SealError::DecryptFailed)?;
        hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
            &OpModeR::Base,
            &key.sk,
            &enc,
            HPKE_INFO,
            self.ciphertext,
            self.header_bytes,
        )
        .map_err(|_| SealError::DecryptFailed)
    }

    /// The encapsulated key (for test vectors and diagnostics).
    pub fn enc(&self) -> &[u8] {
        self.enc
    }
}

/// Verifies and opens in one step (receiver side).
pub fn verify_and_open(
    env: &[u8],
    appliance_key: &PublicKey,
    key: &RecipientSecretKey,
) -> Result<(EnvelopeHeader, Vec<u8>), SealError> {
    let p = parse(env)?;
    p.verify(appliance_key)?;
    let pt = p.open(key)?;
    Ok((p.header, pt))
}

/// What the appliance puts in the header; key ids are filled in by [`seal`].
#[derive(Debug, Clone)]
pub struct EnvelopeMeta {
    pub kind: BundleKind,
    pub bundle_id: [u8; 16],
    pub seq: u64,
    pub created_at_ms: u64,
    pub appliance_id: String,
}

/// Seals `plaintext` to `recipient` and signs the result with `signer`.
pub fn seal(
    meta: &EnvelopeMeta,
    plaintext: &[u8],
    recipient: &RecipientPublicKey,
    signer: &SigningKey,
) -> Result<Vec<u8>, SealError> {
    seal_with_rng(meta, plaintext, recipient, signer, &mut os_rng())
}

/// [`seal`] with a fixed ephemeral key seed; only for publishing test vectors.
#[doc(hidden)]
pub fn seal_with_ephemeral_seed(
    meta: &EnvelopeMeta,
    plaintext: &[u8],
    recipient: &RecipientPublicKey,
    signer: &SigningKey,
    ikm_e: [u8; 32],
) -> Result<Vec<u8>, SealError> {
    seal_with_rng(
        meta,
        plaintext,
        recipient,
        signer,
        &mut FixedRng::new(&ikm_e),
    )
}

fn seal_with_rng<R: rand_core::CryptoRng + rand_core::RngCore>(
    meta: &EnvelopeMeta,
    plaintext: &[u8],
    recipient: &RecipientPublicKey,
    signer: &SigningKey,
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(SealError::TooLarge(plaintext.len()));
    }
    if !valid_appliance_id(&meta.appliance_id) {
        return Err(SealError::BadApplianceId);
    }
    let header = EnvelopeHeader {
        kind: meta.kind,
        bundle_id: meta.bundle_id,
        seq: meta.seq,
        created_at_ms: meta.created_at_ms,
        recipient_key_id: recipient.key_id(),
        signer_key_id: key_id8(&signer.public().0),
        appliance_id: meta.appliance_id.clone(),
    }
    .encode();
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&recipient.0)
        .map_err(|_| SealError::BadKey("not an X25519 public key"))?;
    let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &pk,
        HPKE_INFO,
        plaintext,
        &header,
        rng,
    )
    .map_err(|_| SealError::SealFailed)?;
    let mut out = header;
    out.reserve(ENC_LEN + 4 + ct.len() + SIG_LEN);
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&(ct.len() as u32).to_be_bytes());
    out.extend_from_slice(&ct);
    let sig = signer.sign(&out).map_err(|_| SealError::Sign)?;
    out.extend_from_slice(&sig);
    Ok(out)
}

/// An RNG that replays fixed bytes: HPKE's key generation draws exactly one 32-byte seed, so
/// this reproduces the RFC 9180 test vectors' ephemeral keys.
#[doc(hidden)]
pub struct FixedRng {
    bytes: Vec<u8>,
    pos: usize,
}

impl FixedRng {
    pub fn new(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.to_vec(),
            pos: 0,
        }
    }
}

impl rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let end = self.pos + dest.len();
        assert!(end <= self.bytes.len(), "FixedRng exhausted");
        dest.copy_from_slice(&self.bytes[self.pos..end]);
        self.pos = end;
    }
}
impl rand_core::CryptoRng for FixedRng {}

/// Outcome the receiver reports in a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptStatus {
    /// Stored now.
    Stored = 1,
    /// Already stored earlier with the same envelope (a resend).
    Duplicate = 2,
}

/// The receiver's signed acknowledgement of custody.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub status: ReceiptStatus,
    pub bundle_id: [u8; 16],
    pub envelope_sha256: [u8; 32],
    pub seq: u64,
    pub receipted_at_ms: u64,
    pub signer_key_id: [u8; 8],
    pub appliance_id: String,
}

const RECEIPT_FIXED: usize = 79;

impl Receipt {
    /// Encodes and signs (the signer key id is set from `signer`).
    pub fn sign(mut self, signer: &SigningKey) -> Result<Vec<u8>, SealError> {
        if !valid_appliance_id(&self.appliance_id) {
            return Err(SealError::BadApplianceId);
        }
        self.signer_key_id = key_id8(&signer.public().0);
        let mut b = Vec::with_capacity(RECEIPT_FIXED + self.appliance_id.len() + SIG_LEN);
        b.extend_from_slice(RECEIPT_MAGIC);
        b.push(FORMAT_VERSION);
        b.push(self.status as u8);
        b.extend_from_slice(&self.bundle_id);
        b.extend_from_slice(&self.envelope_sha256);
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.receipted_at_ms.to_be_bytes());
        b.extend_from_slice(&self.signer_key_id);
        b.push(self.appliance_id.len() as u8);
        b.extend_from_slice(self.appliance_id.as_bytes());
        let sig = signer.sign(&b).map_err(|_| SealError::Sign)?;
        b.extend_from_slice(&sig);
        Ok(b)
    }

    /// Parses and verifies a receipt against the receiver's signing key.
    pub fn verify(bytes: &[u8], receiver_key: &PublicKey) -> Result<Receipt, SealError> {
        if bytes.len() < RECEIPT_FIXED + SIG_LEN {
            return Err(SealError::Truncated("receipt too short"));
        }
        if &bytes[..4] != RECEIPT_MAGIC {
            return Err(SealError::BadMagic);
        }
        if bytes[4] != FORMAT_VERSION {
            return Err(SealError::UnsupportedVersion(bytes[4]));
        }
        let l = bytes[78] as usize;
        if bytes.len() != RECEIPT_FIXED + l + SIG_LEN {
            return Err(SealError::Truncated("receipt length mismatch"));
        }
        let (signed, sig) = bytes.split_at(RECEIPT_FIXED + l);
        let mut signer_key_id = [0u8; 8];
        signer_key_id.copy_from_slice(&bytes[70..78]);
        if signer_key_id != key_id8(&receiver_key.0) {
            return Err(SealError::BadSignature);
        }
        receiver_key
            .verify(signed, sig)
            .map_err(|_| SealError::BadSignature)?;
        let status = match bytes[5] {
            1 => ReceiptStatus::Stored,
            2 => ReceiptStatus::Duplicate,
            k => return Err(SealError::BadKind(k)),
        };
        let mut bundle_id = [0u8; 16];
        bundle_id.copy_from_slice(&bytes[6..22]);
        let mut envelope_sha256 = [0u8; 32];
        envelope_sha256.copy_from_slice(&bytes[22..54]);
        let appliance_id = std::str::from_utf8(&bytes[RECEIPT_FIXED..RECEIPT_FIXED + l])
            .ok()
            .filter(|s| valid_appliance_id(s))
            .ok_or(SealError::BadApplianceId)?
            .to_string();
        Ok(Receipt {
            status,
            bundle_id,
            envelope_sha256,
            seq: be_u64(&bytes[54..]),
            receipted_at_ms: be_u64(&bytes[62..]),
            signer_key_id,
            appliance_id,
        })
    }
}

/// RFC 9180 known-answer check for the v1 suite: derives both key pairs from their seeds,
/// encapsulates with the fixed ephemeral seed, seals `(aad, pt)` pairs in sequence and exports.
/// Returns (skRm, pkRm, pkEm, enc, ciphertexts, exports) for comparison with published vectors.
#[doc(hidden)]
#[allow(clippy::type_complexity)]
pub fn hpke_known_answer(
    ikm_r: &[u8],
    ikm_e: &[u8],
    info: &[u8],
    messages: &[(Vec<u8>, Vec<u8>)],
    exports: &[(Vec<u8>, usize)],
) -> (
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    Vec<Vec<u8>>,
    Vec<Vec<u8>>,
) {
    let (sk_r, pk_r) = Kem::derive_keypair(ikm_r);
    let (_, pk_e) = Kem::derive_keypair(ikm_e);
    let mut rng = FixedRng::new(ikm_e);
    let (enc, mut sender) =
        hpke::setup_sender::<AesGcm256, HkdfSha256, Kem, _>(&OpModeS::Base, &pk_r, info, &mut rng)
            .expect("setup sender");
    let mut receiver =
        hpke::setup_receiver::<AesGcm256, HkdfSha256, Kem>(&OpModeR::Base, &sk_r, &enc, info)
            .expect("setup receiver");
    let mut cts = Vec::new();
    for (aad, pt) in messages {
        let ct = sender.seal(pt, aad).expect("seal");
        let back = receiver.open(&ct, aad).expect("open own ciphertext");
        assert_eq!(&back, pt);
        cts.push(ct);
    }
    let mut outs = Vec::new();
    for (ctx, len) in exports {
        let mut o = vec![0u8; *len];
        sender.export(ctx, &mut o).expect("export");
        outs.push(o);
    }
    (
        sk_r.to_bytes().to_vec(),
        pk_r.to_bytes().to_vec(),
        pk_e.to_bytes().to_vec(),
        enc.to_bytes().to_vec(),
        cts,
        outs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (SigningKey, RecipientSecretKey) {
        let der = SigningKey::generate_pkcs8().unwrap();
        (
            SigningKey::from_pkcs8("t", &der).unwrap(),
            RecipientSecretKey::generate().0,
        )
    }

    fn meta() -> EnvelopeMeta {
        EnvelopeMeta {
            kind: BundleKind::Bundle,
            bundle_id: [7; 16],
            seq: 42,
            created_at_ms: 1_700_000_000_000,
            appliance_id: "amb-7".into(),
        }
    }

    #[test]
    fn seal_then_open_round_trips_and_binds_the_header() {
        let (s, r) = keys();
        let env = seal(&meta(), b"{\"resourceType\":\"Bundle\"}", r.public(), &s).unwrap();
        let (h, pt) = verify_and_open(&env, &s.public(), &r).unwrap();
        assert_eq!(pt, b"{\"resourceType\":\"Bundle\"}");
        assert_eq!(h.seq, 42);
        assert_eq!(h.appliance_id, "amb-7");
        assert_eq!(h.kind, BundleKind::Bundle);
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let (s, r) = keys();
        let env = seal(&meta(), b"payload", r.public(), &s).unwrap();
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            assert!(
                verify_and_open(&bad, &s.public(), &r).is_err(),
                "flip at byte {i} accepted"
            );
        }
    }

    #[test]
    fn wrong_recipient_and_wrong_signer_are_named() {
        let (s, r) = keys();
        let (s2, r2) = keys();
        let env = seal(&meta(), b"x", r2.public(), &s).unwrap();
        assert!(matches!(
            verify_and_open(&env, &s.public(), &r),
            Err(SealError::WrongRecipient { .. })
        ));
        assert_eq!(
            verify_and_open(&env, &s2.public(), &r2).unwrap_err(),
            SealError::BadSignature
        );
    }

    #[test]
    fn receipts_verify_and_reject_tampering() {
        let (s, _) = keys();
        let rc = Receipt {
            status: ReceiptStatus::Stored,
            bundle_id: [1; 16],
            envelope_sha256: [2; 32],
            seq: 9,
            receipted_at_ms: 5,
            signer_key_id: [0; 8],
            appliance_id: "amb-7".into(),
        };
        let b = rc.clone().sign(&s).unwrap();
        let back = Receipt::verify(&b, &s.public()).unwrap();
        assert_eq!(back.envelope_sha256, [2; 32]);
        assert_eq!(back.signer_key_id, key_id8(&s.public().0));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x80;
            assert!(Receipt::verify(&bad, &s.public()).is_err(), "byte {i}");
        }
    }
}
