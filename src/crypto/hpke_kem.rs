//! HPKE's KEM, DHKEM(X25519, HKDF-SHA256) (RFC 9180 §4.1, KEM id 0x0020), with the
//! recipient's side computed faster: the receiver's key is loaded once into OpenSSL's libcrypto
//! (already linked for SQLCipher, vendored; x86-64 assembly), its public half computed then and
//! kept, so a decapsulation is one X25519 and the two HKDF steps. The `hpke` crate's own KEM
//! (curve25519-dalek's portable ladder) took a ladder and a base-point multiplication per open:
//! ~150 µs on the bench host against ~50 µs here.
//!
//! Everything else stays the `hpke` crate's: encapsulation (the appliance side), the labelled
//! HKDF (`extract_and_expand`, with this KEM's suite id), the key schedule, nonces and AEAD
//! framing. The auth modes (not used by format v1) decapsulate through it too. Same KEM, so
//! the bytes are identical: RFC 9180's known-answer test and the published envelope vectors
//! run through this type, and a unit test compares random decapsulations with the crate's.
//! The only module that imports `openssl_sys`.

use std::ptr::{self, NonNull};

use hpke::kdf::{HkdfSha256, extract_and_expand};
use hpke::kem::{SharedSecret, X25519HkdfSha256 as Reference};
use hpke::rand_core::{CryptoRng, RngCore};
use hpke::{Deserializable, HpkeError, Kem, Serializable};
use zeroize::Zeroizing;

type RefPrivate = <Reference as Kem>::PrivateKey;
type RefPublic = <Reference as Kem>::PublicKey;
type RefEncapped = <Reference as Kem>::EncappedKey;

/// DHKEM(X25519, HKDF-SHA256): use as the `Kem` parameter of `hpke`'s functions.
pub struct X25519Kem;

/// The KEM's suite id for its labelled HKDF: "KEM" || I2OSP(kem_id, 2) (RFC 9180 §4.1).
const SUITE_ID: [u8; 5] = {
    let id = <Reference as Kem>::KEM_ID.to_be_bytes();
    [b'K', b'E', b'M', id[0], id[1]]
};

/// An X25519 public key (raw 32 bytes, as the `hpke` crate checks them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(RefPublic);

/// An encapsulated (ephemeral public) key.
#[derive(Clone)]
pub struct EncappedKey(RefEncapped);

/// An X25519 private key, also held by OpenSSL, with its public half computed at load.
#[derive(Clone)]
pub struct PrivateKey {
    reference: RefPrivate,
    public: PublicKey,
    ossl: OsslKey,
}

impl PrivateKey {
    /// Loads the key into OpenSSL and checks that both implementations derive the same public
    /// key from it (a key they disagree on is refused, not used).
    fn new(reference: RefPrivate) -> Result<Self, HpkeError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        reference.write_exact(raw.as_mut_slice());
        let ossl = OsslKey::private(&raw).ok_or(HpkeError::ValidationError)?;
        let public = PublicKey(Reference::sk_to_pk(&reference));
        if ossl.public() != Some(<[u8; 32]>::from(public.to_bytes())) {
            return Err(HpkeError::ValidationError);
        }
        Ok(Self {
            reference,
            public,
            ossl,
        })
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.reference == other.reference
    }
}
impl Eq for PrivateKey {}

/// The byte encodings of a newtype over one of the crate's key types are the crate's.
macro_rules! same_bytes_as {
    ($ty:ident, $reference:ty) => {
        impl Serializable for $ty {
            type OutputSize = <$reference as Serializable>::OutputSize;
            fn write_exact(&self, buf: &mut [u8]) {
                self.0.write_exact(buf)
            }
        }
        impl Deserializable for $ty {
            fn from_bytes(encoded: &[u8]) -> Result<Self, HpkeError> {
                <$reference>::from_bytes(encoded).map(Self)
            }
        }
    };
}
same_bytes_as!(PublicKey, RefPublic);
same_bytes_as!(EncappedKey, RefEncapped);

impl Serializable for PrivateKey {
    type OutputSize = <RefPrivate as Serializable>::OutputSize;
    fn write_exact(&self, buf: &mut [u8]) {
        self.reference.write_exact(buf)
    }
}
impl Deserializable for PrivateKey {
    fn from_bytes(encoded: &[u8]) -> Result<Self, HpkeError> {
        Self::new(RefPrivate::from_bytes(encoded)?)
    }
}

/// The crate's shared secret, moved into this KEM's type (the same `NSecret`); the original
/// zeroizes itself on drop.
fn adopt(s: SharedSecret<Reference>) -> SharedSecret<X25519Kem> {
    SharedSecret(s.0)
}

impl Kem for X25519Kem {
    type PublicKey = PublicKey;
    type PrivateKey = PrivateKey;
    type EncappedKey = EncappedKey;
    type NSecret = <Reference as Kem>::NSecret;
    const KEM_ID: u16 = <Reference as Kem>::KEM_ID;

    fn sk_to_pk(sk: &PrivateKey) -> PublicKey {
        sk.public.clone()
    }

    fn derive_keypair(ikm: &[u8]) -> (PrivateKey, PublicKey) {
        let (sk, _) = Reference::derive_keypair(ikm);
        let sk = PrivateKey::new(sk).expect("a derived X25519 key loads into OpenSSL");
        let pk = sk.public.clone();
        (sk, pk)
    }

    // RFC 9180 §4.1, base mode:
    //   dh = DH(skR, pkE); kem_context = enc || pk(skR)
    //   shared_secret = ExtractAndExpand(dh, kem_context)
    fn decap(
        sk_recip: &PrivateKey,
        pk_sender_id: Option<&PublicKey>,
        encapped_key: &EncappedKey,
    ) -> Result<SharedSecret<Self>, HpkeError> {
        if let Some(pk_sender) = pk_sender_id {
            return Reference::decap(&sk_recip.reference, Some(&pk_sender.0), &encapped_key.0)
                .map(adopt);
        }
        let enc: [u8; 32] = encapped_key.to_bytes().into();
        // OpenSSL refuses an all-zero result (a low-order point), as RFC 9180 §7.1.4 requires.
        let dh = sk_recip
            .ossl
            .diffie_hellman(&enc)
            .ok_or(HpkeError::DecapError)?;
        let mut kem_context = [0u8; 64];
        kem_context[..32].copy_from_slice(&enc);
        kem_context[32..].copy_from_slice(&sk_recip.public.to_bytes());
        let mut shared = SharedSecret::<Self>::default();
        extract_and_expand::<HkdfSha256>(dh.as_slice(), &SUITE_ID, &kem_context, &mut shared.0)
            .map_err(|_| HpkeError::DecapError)?;
        Ok(shared)
    }

    fn encap<R: CryptoRng + RngCore>(
        pk_recip: &PublicKey,
        sender_id_keypair: Option<(&PrivateKey, &PublicKey)>,
        csprng: &mut R,
    ) -> Result<(SharedSecret<Self>, EncappedKey), HpkeError> {
        let sender = sender_id_keypair.map(|(sk, pk)| (&sk.reference, &pk.0));
        let (shared, enc) = Reference::encap(&pk_recip.0, sender, csprng)?;
        Ok((adopt(shared), EncappedKey(enc)))
    }
}

/// An X25519 private key in OpenSSL (`EVP_PKEY`, reference-counted: clones share it). OpenSSL
/// keeps the secret in its own memory and clears it when the last reference is freed.
struct OsslKey(NonNull<openssl_sys::EVP_PKEY>);

// SAFETY: the key is never modified after it is made, and its reference count is atomic; a
// thread that holds it may free its reference.
unsafe impl Send for OsslKey {}
// SAFETY: OpenSSL allows concurrent use of one unmodified EVP_PKEY from several threads, each
// with its own EVP_PKEY_CTX.
unsafe impl Sync for OsslKey {}

impl OsslKey {
    fn private(sk: &[u8; 32]) -> Option<Self> {
        Self::raw(openssl_sys::EVP_PKEY_new_raw_private_key, sk)
    }

    fn public_key(pk: &[u8; 32]) -> Option<Self> {
        Self::raw(openssl_sys::EVP_PKEY_new_raw_public_key, pk)
    }

    /// An X25519 key made from its 32 raw bytes by `new` (OpenSSL's raw private or public
    /// key constructor).
    fn raw(
        new: unsafe extern "C" fn(
            std::ffi::c_int,
            *mut openssl_sys::ENGINE,
            *const u8,
            usize,
        ) -> *mut openssl_sys::EVP_PKEY,
        bytes: &[u8; 32],
    ) -> Option<Self> {
        // SAFETY: reads 32 bytes from `bytes`; returns an owned key or null.
        let p = unsafe {
            new(
                openssl_sys::EVP_PKEY_X25519,
                ptr::null_mut(),
                bytes.as_ptr(),
                bytes.len(),
            )
        };
        let k = NonNull::new(p).map(Self);
        if k.is_none() {
            clear_errors();
        }
        k
    }

    fn public(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        let mut len = out.len();
        // SAFETY: writes at most `len` bytes to `out` and the length written to `len`.
        let ok = unsafe {
            openssl_sys::EVP_PKEY_get_raw_public_key(self.0.as_ptr(), out.as_mut_ptr(), &mut len)
        };
        (ok == 1 && len == out.len()).then_some(out).or_else(|| {
            clear_errors();
            None
        })
    }

    /// X25519(self, peer); `None` when OpenSSL refuses (an all-zero result).
    fn diffie_hellman(&self, peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let peer = Self::public_key(peer)?;
        let mut out = Zeroizing::new([0u8; 32]);
        let mut len = out.len();
        // SAFETY: the context is made from a live key, used on this thread only and freed
        // before return; `EVP_PKEY_derive` writes at most `len` bytes to `out`.
        let ok = unsafe {
            let ctx = openssl_sys::EVP_PKEY_CTX_new(self.0.as_ptr(), ptr::null_mut());
            if ctx.is_null() {
                false
            } else {
                let ok = openssl_sys::EVP_PKEY_derive_init(ctx) == 1
                    && openssl_sys::EVP_PKEY_derive_set_peer(ctx, peer.0.as_ptr()) == 1
                    && openssl_sys::EVP_PKEY_derive(ctx, out.as_mut_ptr(), &mut len) == 1;
                openssl_sys::EVP_PKEY_CTX_free(ctx);
                ok
            }
        };
        // Not all-zero either way (OpenSSL checks it too; constant time, no early exit).
        let nonzero = out.iter().fold(0u8, |a, b| a | b) != 0;
        if ok && len == out.len() && nonzero {
            Some(out)
        } else {
            clear_errors();
            None
        }
    }
}

impl Clone for OsslKey {
    fn clone(&self) -> Self {
        // SAFETY: the key is live; up_ref only increments its atomic reference count.
        let ok = unsafe { openssl_sys::EVP_PKEY_up_ref(self.0.as_ptr()) };
        assert_eq!(ok, 1, "EVP_PKEY_up_ref failed");
        Self(self.0)
    }
}

impl Drop for OsslKey {
    fn drop(&mut self) {
        // SAFETY: releases the one reference this value holds.
        unsafe { openssl_sys::EVP_PKEY_free(self.0.as_ptr()) }
    }
}

/// Leaves no OpenSSL error on this thread's queue (SQLCipher shares the library).
fn clear_errors() {
    // SAFETY: clears the calling thread's error queue.
    unsafe { openssl_sys::ERR_clear_error() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> rand_core::UnwrapErr<rand_core::OsRng> {
        use rand_core::TryRngCore;
        rand_core::OsRng.unwrap_err()
    }

    #[test]
    fn decapsulation_equals_the_hpke_crates() {
        let mut rng = rng();
        for _ in 0..64 {
            let (sk_ref, pk_ref) = Reference::gen_keypair(&mut rng);
            let sk = PrivateKey::from_bytes(&sk_ref.to_bytes()).unwrap();
            assert_eq!(X25519Kem::sk_to_pk(&sk).0, pk_ref);
            let (theirs, enc) = Reference::encap(&pk_ref, None, &mut rng).unwrap();
            let ours = X25519Kem::decap(&sk, None, &EncappedKey(enc.clone())).unwrap();
            assert_eq!(ours.0, theirs.0);
            assert_eq!(Reference::decap(&sk_ref, None, &enc).unwrap().0, ours.0);
            // And the other way: our encapsulation opens with the crate's decapsulation.
            let (ours, enc) = X25519Kem::encap(&X25519Kem::sk_to_pk(&sk), None, &mut rng).unwrap();
            assert_eq!(Reference::decap(&sk_ref, None, &enc.0).unwrap().0, ours.0);
        }
    }

    #[test]
    fn a_low_order_encapsulated_key_is_refused() {
        let (sk, _) = X25519Kem::gen_keypair(&mut rng());
        // u = 0 and u = 1 are small-order points: X25519 with them is all zeros.
        for u in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            let enc = EncappedKey::from_bytes(&u).unwrap();
            assert!(matches!(
                X25519Kem::decap(&sk, None, &enc),
                Err(HpkeError::DecapError)
            ));
        }
        // The refusal leaves nothing on OpenSSL's error queue.
        // SAFETY: pops from the calling thread's error queue.
        assert_eq!(unsafe { openssl_sys::ERR_get_error() }, 0);
    }

    #[test]
    fn clones_share_one_key_and_outlive_the_original() {
        let (sk, pk) = X25519Kem::gen_keypair(&mut rng());
        let copy = sk.clone();
        drop(sk);
        let (theirs, enc) = X25519Kem::encap(&pk, None, &mut rng()).unwrap();
        assert_eq!(X25519Kem::decap(&copy, None, &enc).unwrap().0, theirs.0);
        assert!(copy == copy.clone());
    }
}
