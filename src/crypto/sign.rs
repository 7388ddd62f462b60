//! The appliance signing key: ECDSA P-256 with SHA-256 (ES256, fixed-width r||s signatures),
//! stored as PKCS#8 so that it can later move into a TPM or HSM without a format change.
//!
//! Signatures are canonical: `s ≤ n/2` ("low-S"). We produce only those and require them on
//! every envelope and receipt, because for any valid (r, s) the twin (r, n − s) is valid too:
//! without the rule, anyone who reads one envelope could publish a byte-different twin with
//! another hash first (review 2026-11-30). Local audit checkpoints written before the rule are
//! still checked with [`PublicKey::verify_any_s`].

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};

use super::CryptoError;

/// DER prefix of a SubjectPublicKeyInfo for an uncompressed P-256 point (RFC 5480).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The order n of the P-256 group, big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];
/// ⌊n/2⌋, big-endian: the largest canonical `s`.
const P256_HALF_N: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// Whether a 64-byte r||s signature has `s ≤ n/2` (anything else is not canonical).
pub fn is_low_s(sig: &[u8]) -> bool {
    sig.len() == 64 && sig[32..] <= P256_HALF_N[..]
}

/// Replaces a high `s` by `n − s` (the same signature in canonical form); no-op otherwise.
pub fn canonicalize(sig: &mut [u8]) {
    if sig.len() == 64 && !is_low_s(sig) {
        flip_s(sig);
    }
}

/// Replaces `s` of a 64-byte r||s signature by `n − s`: the other of the two signatures ECDSA
/// accepts for the same message (low ↔ high). Tests use it to make the twin a forger would.
pub fn flip_s(sig: &mut [u8]) {
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = P256_N[i] as i16 - sig[32 + i] as i16 - borrow;
        borrow = i16::from(d < 0);
        sig[32 + i] = d.rem_euclid(256) as u8;
    }
}

/// The appliance's ES256 key pair.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl SigningKey {
    /// Generates a new key and returns its PKCS#8 DER encoding (to be stored 0600).
    pub fn generate_pkcs8() -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| CryptoError::Rng)?;
        Ok(zeroize::Zeroizing::new(doc.as_ref().to_vec()))
    }

    pub fn from_pkcs8(name: &str, der: &[u8]) -> Result<Self, CryptoError> {
        let rng = SystemRandom::new();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng).map_err(|e| {
                CryptoError::BadKey {
                    name: name.into(),
                    why: format!("not a PKCS#8 P-256 private key ({e})"),
                }
            })?;
        Ok(SigningKey { pair, rng })
    }

    /// Signs `msg`; the result is 64 bytes (r || s) with a low `s`.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut sig = self
            .pair
            .sign(&self.rng, msg)
            .map_err(|_| CryptoError::Rng)?
            .as_ref()
            .to_vec();
        canonicalize(&mut sig);
        Ok(sig)
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.pair.public_key().as_ref().to_vec())
    }

    /// Reads a PEM "PRIVATE KEY" (PKCS#8), as [`pkcs8_to_pem`] writes it.
    pub fn from_pem(name: &str, pem: &str) -> Result<Self, CryptoError> {
        let der = pem_body(pem, "PRIVATE KEY").ok_or_else(|| CryptoError::BadKey {
            name: name.into(),
            why: "not a PEM \"PRIVATE KEY\"".into(),
        })?;
        Self::from_pkcs8(name, &der)
    }
}

/// PEM "PRIVATE KEY" of a PKCS#8 document (readable by OpenSSL), for keys kept off the
/// appliance (model signing).
pub fn pkcs8_to_pem(der: &[u8]) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(pem("PRIVATE KEY", der))
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// The DER inside a PEM block with `label`; a bare base64 body (one line, as in a config
/// value) is accepted too.
fn pem_body(text: &str, label: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    use base64::Engine;
    let text = text.trim();
    let body: String = if text.starts_with("-----") {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let inner = text.strip_prefix(&begin)?.trim_end().strip_suffix(&end)?;
        inner.split_whitespace().collect()
    } else {
        text.split_whitespace().collect()
    };
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()
        .map(zeroize::Zeroizing::new)
}

/// A P-256 public key as an uncompressed SEC1 point (65 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(pub Vec<u8>);

impl PublicKey {
    /// Key id: first 8 bytes of SHA-256 of the SEC1 point, hex.
    pub fn key_id(&self) -> String {
        hex::encode(&super::sha256(&self.0)[..8])
    }

    /// Verifies a canonical (low-S) signature; a high-S one is refused even if it would verify.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        if !is_low_s(sig) {
            return Err(CryptoError::BadSignature);
        }
        self.verify_any_s(msg, sig)
    }

    /// Verifies either form (only for local records signed before signatures were canonical).
    pub fn verify_any_s(&self, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.0)
            .verify(msg, sig)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let mut v = P256_SPKI_PREFIX.to_vec();
        v.extend_from_slice(&self.0);
        v
    }

    pub fn from_spki_der(der: &[u8]) -> Option<Self> {
        (der.len() == P256_SPKI_PREFIX.len() + 65 && der.starts_with(&P256_SPKI_PREFIX))
            .then(|| PublicKey(der[P256_SPKI_PREFIX.len()..].to_vec()))
    }

    /// PEM "PUBLIC KEY" (SPKI), readable by OpenSSL.
    pub fn to_pem(&self) -> String {
        pem("PUBLIC KEY", &self.to_spki_der())
    }

    /// A PEM "PUBLIC KEY" or its bare base64 body (SPKI DER).
    pub fn from_pem(text: &str) -> Option<Self> {
        Self::from_spki_der(&pem_body(text, "PUBLIC KEY")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_pem_round_trip() {
        let der = SigningKey::generate_pkcs8().unwrap();
        let k = SigningKey::from_pkcs8("t", &der).unwrap();
        let sig = k.sign(b"checkpoint").unwrap();
        assert_eq!(sig.len(), 64);
        let pubk = PublicKey::from_pem(&k.public().to_pem()).unwrap();
        assert_eq!(pubk, k.public());
        pubk.verify(b"checkpoint", &sig).unwrap();
        assert!(pubk.verify(b"checkpoinT", &sig).is_err());
        // A bare base64 body (a config value) names the same key; another label does not.
        let pem = k.public().to_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(PublicKey::from_pem(&body), Some(k.public()));
        assert_eq!(PublicKey::from_pem(&pem.replace("PUBLIC", "PRIVATE")), None);
        let back = SigningKey::from_pem("t", &pkcs8_to_pem(&der)).unwrap();
        assert_eq!(back.public(), k.public());
        assert!(SigningKey::from_pem("t", &pem).is_err());
    }

    #[test]
    fn signatures_are_low_s_and_the_high_s_twin_is_refused() {
        let der = SigningKey::generate_pkcs8().unwrap();
        let k = SigningKey::from_pkcs8("t", &der).unwrap();
        let pubk = k.public();
        let mut twins = 0;
        for i in 0..64u32 {
            let msg = i.to_be_bytes();
            let sig = k.sign(&msg).unwrap();
            assert!(is_low_s(&sig), "signature {i} is high-S");
            pubk.verify(&msg, &sig).unwrap();
            // The twin (r, n - s): valid ECDSA, but not canonical.
            let mut twin = sig.clone();
            flip_s(&mut twin);
            if twin != sig {
                twins += 1;
                pubk.verify_any_s(&msg, &twin).unwrap();
                assert!(pubk.verify(&msg, &twin).is_err());
                let mut back = twin.clone();
                canonicalize(&mut back);
                assert_eq!(back, sig);
            }
        }
        assert_eq!(twins, 64);
    }

    #[test]
    fn the_half_order_bound_is_exact() {
        let mut sig = [0u8; 64];
        sig[32..].copy_from_slice(&P256_HALF_N);
        assert!(is_low_s(&sig));
        sig[63] += 1;
        assert!(!is_low_s(&sig));
        canonicalize(&mut sig);
        // n - (n/2 + 1) = n/2 (n is odd).
        assert_eq!(sig[32..], P256_HALF_N[..]);
    }

    #[test]
    fn garbage_is_not_a_signing_key() {
        assert!(matches!(
            SigningKey::from_pkcs8("x", b"nope"),
            Err(CryptoError::BadKey { .. })
        ));
    }
}
