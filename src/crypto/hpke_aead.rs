//! AES-256-GCM for HPKE (RFC 9180 AEAD id 0x0002) computed by `ring` instead of the RustCrypto
//! `aes-gcm` that the `hpke` crate ships. The key schedule, nonces and sequence numbers stay
//! `hpke`'s; only the AEAD primitive is swapped, so envelopes are byte-identical (the published
//! test vectors in `docs/bundle-format.md` pin that) and an envelope sealed by either opens with
//! the other. Why: on the receiver the RustCrypto GHASH (one 16-byte block per carry-less multiply)
//! was about 15 % of the opening thread's CPU for a 41 KB bundle; `ring`'s AES-GCM interleaves
//! AES-NI/VAES with aggregated GHASH (ARMv8 crypto extensions on the Orin). See
//! `docs/decisions/2026-12-07-hpke-aead-on-ring.md`.

use aead::consts::{U0, U12, U16, U32};
use aead::{AeadCore, AeadInPlace, Key, KeyInit, KeySizeUser, Nonce, Tag};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce as RingNonce, UnboundKey};

/// The HPKE AEAD marker: use as the `A` parameter of `hpke::single_shot_seal`/`_open` and
/// `setup_sender`/`setup_receiver`.
pub struct RingAesGcm256;

impl hpke::aead::Aead for RingAesGcm256 {
    type AeadImpl = RingGcmKey;
    const AEAD_ID: u16 = 0x0002;
}

/// One AES-256-GCM key in `ring`'s expanded form (round keys and GHASH table computed once per
/// HPKE context, as the RustCrypto implementation does).
#[derive(Clone)]
pub struct RingGcmKey(LessSafeKey);

impl KeySizeUser for RingGcmKey {
    type KeySize = U32;
}

impl KeyInit for RingGcmKey {
    fn new(key: &Key<Self>) -> Self {
        // `Key<Self>` is exactly 32 bytes, the only length AES-256-GCM refuses nothing for.
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_slice())
            .unwrap_or_else(|_| unreachable!("a 32-byte key is always a valid AES-256 key"));
        RingGcmKey(LessSafeKey::new(unbound))
    }
}

impl AeadCore for RingGcmKey {
    type NonceSize = U12;
    type TagSize = U16;
    type CiphertextOverhead = U0;
}

fn ring_nonce(nonce: &Nonce<RingGcmKey>) -> RingNonce {
    let mut n = [0u8; 12];
    n.copy_from_slice(nonce.as_slice());
    RingNonce::assume_unique_for_key(n)
}

impl AeadInPlace for RingGcmKey {
    fn encrypt_in_place_detached(
        &self,
        nonce: &Nonce<Self>,
        associated_data: &[u8],
        buffer: &mut [u8],
    ) -> aead::Result<Tag<Self>> {
        let tag = self
            .0
            .seal_in_place_separate_tag(ring_nonce(nonce), Aad::from(associated_data), buffer)
            .map_err(|_| aead::Error)?;
        Ok(Tag::<Self>::clone_from_slice(tag.as_ref()))
    }

    fn decrypt_in_place_detached(
        &self,
        nonce: &Nonce<Self>,
        associated_data: &[u8],
        buffer: &mut [u8],
        tag: &Tag<Self>,
    ) -> aead::Result<()> {
        let mut t = [0u8; 16];
        t.copy_from_slice(tag.as_slice());
        self.0
            .open_in_place_separate_tag(
                ring_nonce(nonce),
                Aad::from(associated_data),
                ring::aead::Tag::from(t),
                buffer,
                0..,
            )
            .map(|_| ())
            .map_err(|_| aead::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aead::generic_array::GenericArray;

    /// Every length class GCM treats differently (empty, partial block, whole blocks, the bulk
    /// path's strides) agrees with the RustCrypto implementation `hpke` ships, both ways, and a
    /// flipped tag, ciphertext or associated-data byte is refused.
    #[test]
    fn agrees_with_the_rustcrypto_aes_gcm_and_refuses_tampering() {
        type Reference = <hpke::aead::AesGcm256 as hpke::aead::Aead>::AeadImpl;
        let mut key = [0u8; 32];
        super::super::random_bytes(&mut key).unwrap();
        let ours = RingGcmKey::new(GenericArray::from_slice(&key));
        let theirs = Reference::new(GenericArray::from_slice(&key));
        for len in [0usize, 1, 15, 16, 17, 63, 64, 255, 256, 1000, 4096, 41_239] {
            let nonce = GenericArray::clone_from_slice(&(len as u128).to_be_bytes()[4..]);
            let aad = format!("aad {len}").into_bytes();
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();

            let mut a = plain.clone();
            let tag_a = ours
                .encrypt_in_place_detached(&nonce, &aad, &mut a)
                .unwrap();
            let mut b = plain.clone();
            let tag_b = theirs
                .encrypt_in_place_detached(&nonce, &aad, &mut b)
                .unwrap();
            assert_eq!(a, b, "ciphertext differs at {len} bytes");
            assert_eq!(tag_a, tag_b, "tag differs at {len} bytes");

            let mut back = a.clone();
            theirs
                .decrypt_in_place_detached(&nonce, &aad, &mut back, &tag_a)
                .unwrap();
            assert_eq!(back, plain);
            let mut back = b.clone();
            ours.decrypt_in_place_detached(&nonce, &aad, &mut back, &tag_b)
                .unwrap();
            assert_eq!(back, plain);

            let mut bad_tag = tag_a;
            bad_tag[len % 16] ^= 1;
            assert!(
                ours.decrypt_in_place_detached(&nonce, &aad, &mut a.clone(), &bad_tag)
                    .is_err()
            );
            assert!(
                ours.decrypt_in_place_detached(&nonce, b"other", &mut a.clone(), &tag_a)
                    .is_err()
            );
            if len > 0 {
                let mut flipped = a.clone();
                flipped[len / 2] ^= 0x80;
                assert!(
                    ours.decrypt_in_place_detached(&nonce, &aad, &mut flipped, &tag_a)
                        .is_err()
                );
            }
        }
    }
}
