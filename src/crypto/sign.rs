//! The appliance signing key: ECDSA P-256 with SHA-256 (ES256, fixed-width r||s signatures),
//! stored as PKCS#8 so that it can later move into a TPM or HSM without a format change.

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

    /// Signs `msg`; the result is 64 bytes (r || s).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        Ok(self
            .pair
            .sign(&self.rng, msg)
            .map_err(|_| CryptoError::Rng)?
            .as_ref()
            .to_vec())
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.pair.public_key().as_ref().to_vec())
    }
}

/// A P-256 public key as an uncompressed SEC1 point (65 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(pub Vec<u8>);

impl PublicKey {
    /// Key id: first 8 bytes of SHA-256 of the SEC1 point, hex.
    pub fn key_id(&self) -> String {
        hex::encode(&super::sha256(&self.0)[..8])
    }

    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
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
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.to_spki_der());
        let mut s = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
            s.push('\n');
        }
        s.push_str("-----END PUBLIC KEY-----\n");
        s
    }

    pub fn from_pem(pem: &str) -> Option<Self> {
        use base64::Engine;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .ok()?;
        Self::from_spki_der(&der)
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
    }

    #[test]
    fn garbage_is_not_a_signing_key() {
        assert!(matches!(
            SigningKey::from_pkcs8("x", b"nope"),
            Err(CryptoError::BadKey { .. })
        ));
    }
}
