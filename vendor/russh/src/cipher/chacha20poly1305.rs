// Copyright 2016 Pierre-Étienne Meunier
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.
//

// http://cvsweb.openbsd.org/cgi-bin/cvsweb/src/usr.bin/ssh/PROTOCOL.chacha20poly1305?annotate=HEAD
//
// Drawbridge: packets of 8 KiB and more go through RustCrypto's `chacha20`
// and `poly1305`, smaller ones through ring's `chacha20_poly1305_openssh`.
// ring's Poly1305 is scalar; poly1305's AVX2 backend and chacha20's AVX-512
// backend (enabled by `--cfg chacha20_avx512`, see the workspace's
// `.cargo/config.toml`) are picked at run time and make bulk packets about 1.4x
// faster, but cost about 2 µs more per packet to set up, so ring stays faster
// below 8 KiB (keystrokes, acknowledgements). See DRAWBRIDGE.md.

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20Legacy;
use poly1305::universal_hash::KeyInit;
use poly1305::Poly1305;
use ring::aead::chacha20_poly1305_openssh as ring_openssh;
use subtle::ConstantTimeEq;

use super::super::Error;
use crate::mac::MacAlgorithm;

const KEY_LEN: usize = 64;
const TAG_LEN: usize = 16;
/// From this many bytes (length field included) the vector backends win.
const VECTOR_FROM: usize = 8 * 1024;

pub struct SshChacha20Poly1305Cipher {}

impl super::Cipher for SshChacha20Poly1305Cipher {
    fn key_len(&self) -> usize {
        KEY_LEN
    }

    fn make_opening_key(
        &self,
        k: &[u8],
        _: &[u8],
        _: &[u8],
        _: &dyn MacAlgorithm,
    ) -> Box<dyn super::OpeningKey + Send> {
        Box::new(OpeningKey(
            Keys::new(k),
            ring_openssh::OpeningKey::new(&key_array(k)),
        ))
    }

    fn make_sealing_key(
        &self,
        k: &[u8],
        _: &[u8],
        _: &[u8],
        _: &dyn MacAlgorithm,
    ) -> Box<dyn super::SealingKey + Send> {
        Box::new(SealingKey(
            Keys::new(k),
            ring_openssh::SealingKey::new(&key_array(k)),
        ))
    }
}

/// The two keys of PROTOCOL.chacha20poly1305: the first 32 bytes (K_2)
/// encrypt the payload and derive the Poly1305 key, the last 32 (K_1) only
/// encrypt the packet length.
struct Keys {
    payload: [u8; 32],
    length: [u8; 32],
}

impl Keys {
    fn new(k: &[u8]) -> Self {
        let mut payload = [0; 32];
        let mut length = [0; 32];
        payload.copy_from_slice(&k[..32]);
        length.copy_from_slice(&k[32..KEY_LEN]);
        Keys { payload, length }
    }

    fn length_cipher(&self, sequence_number: u32) -> ChaCha20Legacy {
        ChaCha20Legacy::new(&self.length.into(), &nonce(sequence_number).into())
    }

    /// The payload cipher positioned at block 1, and the Poly1305 key taken
    /// from block 0.
    fn payload_cipher(&self, sequence_number: u32) -> (ChaCha20Legacy, Poly1305) {
        let mut cipher = ChaCha20Legacy::new(&self.payload.into(), &nonce(sequence_number).into());
        let mut poly_key = [0u8; 32];
        cipher.apply_keystream(&mut poly_key);
        cipher.seek(64u64);
        (cipher, Poly1305::new(&poly_key.into()))
    }
}

fn key_array(k: &[u8]) -> [u8; KEY_LEN] {
    let mut key = [0; KEY_LEN];
    key.copy_from_slice(&k[..KEY_LEN]);
    key
}

fn nonce(sequence_number: u32) -> [u8; 8] {
    u64::from(sequence_number).to_be_bytes()
}

pub struct OpeningKey(Keys, ring_openssh::OpeningKey);

pub struct SealingKey(Keys, ring_openssh::SealingKey);

impl super::OpeningKey for OpeningKey {
    fn decrypt_packet_length(
        &self,
        sequence_number: u32,
        encrypted_packet_length: &[u8],
    ) -> [u8; 4] {
        let mut length = [0; 4];
        length.copy_from_slice(&encrypted_packet_length[..4]);
        self.1.decrypt_packet_length(sequence_number, length)
    }

    fn tag_len(&self) -> usize {
        TAG_LEN
    }

    /// `ciphertext_and_tag` is the encrypted length, the encrypted payload and
    /// the tag; the returned plaintext excludes the length.
    fn open<'a>(
        &mut self,
        sequence_number: u32,
        ciphertext_and_tag: &'a mut [u8],
    ) -> Result<&'a [u8], Error> {
        let ciphertext_len = ciphertext_and_tag.len() - TAG_LEN;
        let (ciphertext, tag) = ciphertext_and_tag.split_at_mut(ciphertext_len);
        if ciphertext.len() < super::PACKET_LENGTH_LEN {
            return Err(Error::DecryptionError);
        }
        if ciphertext.len() < VECTOR_FROM {
            let mut ring_tag = [0; TAG_LEN];
            ring_tag.copy_from_slice(tag);
            return self
                .1
                .open_in_place(sequence_number, ciphertext, &ring_tag)
                .map_err(|_| Error::DecryptionError);
        }
        let (mut cipher, mac) = self.0.payload_cipher(sequence_number);
        let expected = mac.compute_unpadded(ciphertext);
        if !bool::from(expected.as_slice().ct_eq(tag)) {
            return Err(Error::DecryptionError);
        }
        let payload = &mut ciphertext[super::PACKET_LENGTH_LEN..];
        cipher.apply_keystream(payload);
        Ok(payload)
    }
}

impl super::SealingKey for SealingKey {
    fn padding_length(&self, payload: &[u8]) -> usize {
        let block_size = 8;
        let extra_len = super::PACKET_LENGTH_LEN + super::PADDING_LENGTH_LEN;
        let padding_len = if payload.len() + extra_len <= super::MINIMUM_PACKET_LEN {
            super::MINIMUM_PACKET_LEN - payload.len() - super::PADDING_LENGTH_LEN
        } else {
            block_size - ((super::PADDING_LENGTH_LEN + payload.len()) % block_size)
        };
        if padding_len < super::PACKET_LENGTH_LEN {
            padding_len + block_size
        } else {
            padding_len
        }
    }

    // As explained in "SSH via CTR mode with stateful decryption" in
    // https://openvpn.net/papers/ssh-security.pdf, the padding doesn't need to
    // be random because we're doing stateful counter-mode encryption. Use
    // fixed padding to avoid PRNG overhead.
    fn fill_padding(&self, padding_out: &mut [u8]) {
        for padding_byte in padding_out {
            *padding_byte = 0;
        }
    }

    fn tag_len(&self) -> usize {
        TAG_LEN
    }

    /// `plaintext_in_ciphertext_out` is the plain length followed by the
    /// payload; both are encrypted in place.
    fn seal(
        &mut self,
        sequence_number: u32,
        plaintext_in_ciphertext_out: &mut [u8],
        tag: &mut [u8],
    ) {
        if plaintext_in_ciphertext_out.len() < VECTOR_FROM {
            let mut ring_tag = [0; TAG_LEN];
            self.1
                .seal_in_place(sequence_number, plaintext_in_ciphertext_out, &mut ring_tag);
            tag.copy_from_slice(&ring_tag);
            return;
        }
        let (length, payload) =
            plaintext_in_ciphertext_out.split_at_mut(super::PACKET_LENGTH_LEN);
        self.0
            .length_cipher(sequence_number)
            .apply_keystream(length);
        let (mut cipher, mac) = self.0.payload_cipher(sequence_number);
        cipher.apply_keystream(payload);
        tag.copy_from_slice(&mac.compute_unpadded(plaintext_in_ciphertext_out));
    }
}
