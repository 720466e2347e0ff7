//! Private files: encrypted by the owner's PServer before they leave it,
//! addressed by the ciphertext's BLAKE3, fetched by ticket.
//!
//! * `crypt` — AES-256-GCM STREAM (RustCrypto's `aead::stream` over
//!   ring's AEADs, 64 KiB segments, a fresh random key and nonce prefix
//!   per file; ChaCha20-Poly1305 for the files of version-1 tickets):
//!   sealing a plaintext given in pieces, opening a ciphertext segment by
//!   segment, each authenticated before it is written.
//! * `vault` — the keys at rest (`data/private-keys.json`, 0600) and the
//!   private folder (`PSERVER_PRIVATE_DIR`, default `data/private`, never
//!   scanned, served or announced), where opened files land whole.
//!
//! The ticket's text form is the wire contract's
//! ([`peerdex_proto::ticket`]). The ciphertext is stored, not derived
//! from the plaintext on each request: the owner's plaintext lives where
//! the user keeps it and may change or move, while the ciphertext must
//! match its id for as long as it is announced; serving stored bytes also
//! keeps verify-on-serve, Range and the replica engine unchanged, and
//! costs no cipher work per download. The price is disk: the ciphertext
//! is the plaintext's size plus 16 bytes per 64 KiB (0.02 %).
//!
//! The ciphertexts themselves are kept by the store (`store::blobs`),
//! served by the peer API like any file, fetched by the download engine
//! (`download::private`), and reached by the user through the control API
//! (`control::private`). Nothing here logs a name or a key.

pub(crate) mod crypt;
mod vault;

pub(crate) use vault::{OpenError, Vault, VaultError, open_to_temp};
