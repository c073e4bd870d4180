//! Checkpoints and their signatures, in the C2SP `tlog-checkpoint` and `signed-note` formats.
//!
//! A checkpoint note reads:
//!
//! ```text
//! <origin>                      the log's name
//! <size>                        number of entries, decimal
//! <base64 Merkle root>          RFC 6962 tree hash of the first <size> entry hashes
//! chain <base64 chain head>     chain(<size>)
//! time <unix seconds>           when the server signed it
//! max-unsigned <n>              at most n entries follow it before the next checkpoint
//! pruned <h>                    retention removed the bodies of entries 1 to h (omitted: none)
//!
//! — <key name> <base64(key id || Ed25519 signature)>
//! ```
//!
//! The `max-unsigned` line is the signer's promise that it never commits more than `n` entries
//! beyond its newest checkpoint: a verifier that finds a longer unsigned tail knows that
//! checkpoints were deleted (or entries appended by someone without the key), while the short
//! tail a crash leaves is only unsigned. Notes signed before the line existed ("legacy" notes,
//! five lines) stay valid; they bound nothing.
//!
//! The `pruned` line is the signer's statement that retention removed the bodies of entries 1 to
//! `h` (their hashes stay in the store, so the chain and the tree still verify): a verifier
//! accepts entries without a body up to it, and only up to it. `h` is the size of an earlier
//! checkpoint and never decreases; the line follows `max-unsigned` and appears only when `h > 0`,
//! so the notes of a log that never pruned read as before.
//!
//! The signature covers the text above the blank line (its final newline included). The key id
//! is the first 4 bytes of `SHA-256(key name || "\n" || 0x01 || public key)`. Public keys are
//! written as verifier keys, `<name>+<hex key id>+<base64(0x01 || public key)>`, and private
//! keys as `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>`, the formats of Go's
//! `golang.org/x/mod/sumdb/note`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, Verifier as _};
use sha2::{Digest, Sha256};

use crate::{Error, Hash};

/// Algorithm byte of Ed25519 keys in signed notes.
const ED25519: u8 = 0x01;
/// Starts every signature line.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// A signed statement of the log's state: its first `size` entries have Merkle root `root` and
/// chain head `chain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Name of the log.
    pub origin: String,
    /// Number of entries covered: sequences 1 to `size`.
    pub size: u64,
    /// RFC 6962 Merkle tree hash of the entry hashes of sequences 1 to `size`.
    pub root: Hash,
    /// Chain value after entry `size` (all zeros when `size` is 0).
    pub chain: Hash,
    /// When it was signed, in seconds since the Unix epoch.
    pub time: u64,
    /// Most entries the signer commits after this checkpoint before it signs the next one;
    /// `None` in legacy notes, which bound nothing.
    pub max_unsigned: Option<u64>,
    /// Entries 1 to `pruned` had their bodies removed by retention (0: none).
    pub pruned: u64,
}

impl Checkpoint {
    /// The signed text of the note: five lines (six with `max-unsigned`, seven with `pruned`),
    /// each ending in a newline.
    pub fn body(&self) -> String {
        let mut body = format!(
            "{}\n{}\n{}\nchain {}\ntime {}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root),
            BASE64.encode(self.chain),
            self.time
        );
        if let Some(max) = self.max_unsigned {
            body.push_str(&format!("max-unsigned {max}\n"));
        }
        if self.pruned > 0 {
            body.push_str(&format!("pruned {}\n", self.pruned));
        }
        body
    }

    /// Parses the text of a note (without its signatures).
    pub fn parse_body(body: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::malformed("checkpoint", why);
        let text = body
            .strip_suffix('\n')
            .ok_or_else(|| bad("does not end with a newline"))?;
        let lines: Vec<&str> = text.split('\n').collect();
        let [origin, size, root, chain, time, extensions @ ..] = &lines[..] else {
            return Err(bad(
                "expected origin, size, root, chain and time lines, then optional \
                 `max-unsigned` and `pruned` lines",
            ));
        };
        let size = parse_decimal(size).ok_or_else(|| bad("size is not a decimal number"))?;
        // Optional lines, each at most once and in this order.
        let mut extensions = extensions.iter().peekable();
        let mut optional = |keyword: &str| {
            let line = extensions.next_if(|line| line.starts_with(keyword))?;
            Some(
                line.strip_prefix(keyword)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(parse_decimal)
                    .ok_or_else(|| bad(&format!("a `{keyword}` line holds one decimal number"))),
            )
        };
        let max_unsigned = optional("max-unsigned").transpose()?;
        let pruned = match optional("pruned").transpose()? {
            // Written only when something was pruned, so that every note has one text.
            Some(0) => return Err(bad("`pruned 0` is written as no `pruned` line")),
            pruned => pruned.unwrap_or(0),
        };
        if let Some(line) = extensions.next() {
            return Err(bad(&format!(
                "unexpected line `{}` after the time line",
                line.chars().take(40).collect::<String>()
            )));
        }
        if pruned > size {
            return Err(bad("`pruned` is larger than the size"));
        }
        check_name(origin).map_err(|why| bad(&format!("origin: {why}")))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root: decode_hash(root).ok_or_else(|| bad("root is not a base64 SHA-256 hash"))?,
            chain: chain
                .strip_prefix("chain ")
                .and_then(decode_hash)
                .ok_or_else(|| bad("fourth line is not `chain <base64 hash>`"))?,
            time: time
                .strip_prefix("time ")
                .and_then(parse_decimal)
                .ok_or_else(|| bad("fifth line is not `time <unix seconds>`"))?,
            max_unsigned,
            pruned,
        })
    }

    /// Checks that the entry with hash `entry_hash` is entry `sequence` of the log this checkpoint
    /// signs, given the Merkle audit path `proof`.
    pub fn verify_inclusion(&self, sequence: u64, entry_hash: &Hash, proof: &[Hash]) -> bool {
        sequence >= 1
            && crate::merkle::verify_inclusion(
                sequence - 1,
                self.size,
                &crate::merkle::leaf_hash(entry_hash),
                proof,
                &self.root,
            )
    }

    /// Checks that the log this checkpoint signs is a prefix of the log `newer` signs (it only
    /// grew), given the consistency proof between their sizes.
    pub fn verify_consistency(&self, newer: &Checkpoint, proof: &[Hash]) -> bool {
        self.origin == newer.origin
            && crate::merkle::verify_consistency(
                self.size,
                newer.size,
                &self.root,
                &newer.root,
                proof,
            )
    }

    /// Reads the checkpoint of a note without checking any signature: only for display.
    pub fn parse_unverified(note: &str) -> Result<Self, Error> {
        let (body, _) = split_note(note)?;
        Self::parse_body(body)
    }
}

/// An Ed25519 key that signs checkpoints under a name.
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key named `name` (no spaces, no `+`).
    pub fn generate(name: &str) -> Result<Self, Error> {
        check_name(name).map_err(|why| Error::malformed("key name", why))?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Self {
            name: name.to_string(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// Parses a private key, `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`.
    pub fn from_text(text: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::malformed("private key", why);
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| bad("does not start with PRIVATE+KEY+"))?;
        let (name, id, key) = split_key(rest).ok_or_else(|| bad("expected name+id+key"))?;
        let bytes = BASE64.decode(key).map_err(|_| bad("key is not base64"))?;
        let seed: [u8; 32] = match bytes.split_first() {
            Some((&ED25519, seed)) => seed.try_into().map_err(|_| bad("seed is not 32 bytes"))?,
            _ => return Err(bad("not an Ed25519 key")),
        };
        let key = Self {
            name: name.to_string(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        };
        if hex(&key.public_key().id) != id {
            return Err(bad("key id does not match the key"));
        }
        Ok(key)
    }

    /// The private key as text (see [`SigningKey::from_text`]).
    pub fn to_text(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex(&self.public_key().id),
            BASE64.encode(bytes)
        )
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key that verifies this key's signatures.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::new(self.name.clone(), self.key.verifying_key())
    }

    /// The signed note of `checkpoint`.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.body();
        let signature = self.key.sign(body.as_bytes());
        let mut blob = self.public_key().id.to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        format!(
            "{body}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            BASE64.encode(blob)
        )
    }
}

/// The public half of a [`SigningKey`]: verifies checkpoint notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    id: [u8; 4],
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    fn new(name: String, key: ed25519_dalek::VerifyingKey) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(name.as_bytes());
        hasher.update([b'\n', ED25519]);
        hasher.update(key.as_bytes());
        let digest = hasher.finalize();
        let id = [digest[0], digest[1], digest[2], digest[3]];
        Self { name, id, key }
    }

    /// Parses a verifier key, `<name>+<hex id>+<base64(0x01 || public key)>`.
    pub fn from_text(text: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::malformed("public key", why);
        let (name, id, key) =
            split_key(text.trim()).ok_or_else(|| bad("expected <name>+<hex id>+<base64 key>"))?;
        let bytes = BASE64.decode(key).map_err(|_| bad("key is not base64"))?;
        let key: [u8; 32] = match bytes.split_first() {
            Some((&ED25519, key)) => key.try_into().map_err(|_| bad("key is not 32 bytes"))?,
            _ => return Err(bad("not an Ed25519 key")),
        };
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
            .map_err(|_| bad("not a valid Ed25519 point"))?;
        let key = Self::new(name.to_string(), key);
        if hex(&key.id) != id {
            return Err(bad("key id does not match the key"));
        }
        Ok(key)
    }

    /// The verifier key as text (see [`PublicKey::from_text`]).
    pub fn to_text(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!("{}+{}+{}", self.name, hex(&self.id), BASE64.encode(bytes))
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks that `note` carries a valid signature by this key and returns its checkpoint.
    /// Signatures by other keys are ignored.
    pub fn open(&self, note: &str) -> Result<Checkpoint, Error> {
        let (body, signatures) = split_note(note)?;
        let mut named = false;
        for line in signatures.lines() {
            let Some((name, blob)) = line
                .strip_prefix(SIGNATURE_PREFIX)
                .and_then(|rest| rest.split_once(' '))
            else {
                return Err(Error::malformed("checkpoint", "bad signature line"));
            };
            if name != self.name {
                continue;
            }
            let Ok(blob) = BASE64.decode(blob) else {
                return Err(Error::malformed("checkpoint", "signature is not base64"));
            };
            if blob.len() != 4 + 64 || blob[..4] != self.id {
                continue;
            }
            named = true;
            let signature = ed25519_dalek::Signature::from_slice(&blob[4..])
                .map_err(|_| Error::BadSignature(self.to_text()))?;
            if self.key.verify(body.as_bytes(), &signature).is_ok() {
                return Checkpoint::parse_body(body);
            }
        }
        if named {
            Err(Error::BadSignature(self.to_text()))
        } else {
            Err(Error::NotSignedBy(self.to_text()))
        }
    }
}

/// Splits a note into its text (with its final newline) and its signature lines.
fn split_note(note: &str) -> Result<(&str, &str), Error> {
    let at = note
        .find("\n\n")
        .ok_or_else(|| Error::malformed("checkpoint", "no blank line before the signatures"))?;
    let (body, signatures) = note.split_at(at + 1);
    Ok((body, &signatures[1..]))
}

/// Names of logs and keys: non-empty, printable, no spaces and no `+`.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty")
    } else if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '+')
    {
        Err("must not contain spaces, control characters or `+`")
    } else {
        Ok(())
    }
}

/// `<name>+<8 hex digits>+<base64>`.
fn split_key(text: &str) -> Option<(&str, &str, &str)> {
    let mut parts = text.splitn(3, '+');
    let (name, id, key) = (parts.next()?, parts.next()?, parts.next()?);
    (check_name(name).is_ok() && id.len() == 8).then_some((name, id, key))
}

fn parse_decimal(text: &str) -> Option<u64> {
    let canonical = text == "0" || (!text.starts_with('0') && !text.is_empty());
    if canonical && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

fn decode_hash(text: &str) -> Option<Hash> {
    BASE64.decode(text).ok()?.try_into().ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle;
    use proptest::prelude::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "audit.example/log".into(),
            size: 42,
            root: [7; 32],
            chain: [9; 32],
            time: 1_700_000_000,
            max_unsigned: Some(1000),
            pruned: 0,
        }
    }

    #[test]
    fn a_pruning_horizon_is_a_seventh_signed_line_only_when_set() {
        let key = SigningKey::generate("log").unwrap();
        let pruned = Checkpoint {
            pruned: 40,
            ..checkpoint()
        };
        let note = key.sign(&pruned);
        assert!(
            note.contains(
                "
max-unsigned 1000
pruned 40

"
            ),
            "{note}"
        );
        assert_eq!(key.public_key().open(&note).unwrap(), pruned);
        assert!(!key.sign(&checkpoint()).contains("pruned"));
        // Signed: moving the horizon breaks the signature.
        let moved = note.replacen("pruned 40", "pruned 41", 1);
        assert!(matches!(
            key.public_key().open(&moved),
            Err(Error::BadSignature(_))
        ));
        let unbounded = Checkpoint {
            max_unsigned: None,
            ..pruned.clone()
        };
        assert_eq!(
            key.public_key().open(&key.sign(&unbounded)).unwrap(),
            unbounded
        );
        for bad in [
            "pruned 0",
            "pruned 43",
            "pruned x",
            "prune 4",
            "pruned 04",
            "max-unsigned 9",
        ] {
            let body = checkpoint().body() + bad + "\n";
            assert!(Checkpoint::parse_body(&body).is_err(), "{bad}");
        }
    }

    #[test]
    fn signed_note_round_trips() {
        let key = SigningKey::generate("audit.example/log").unwrap();
        let note = key.sign(&checkpoint());
        assert!(note.starts_with("audit.example/log\n42\n"), "{note}");
        assert!(note.contains("\n\n\u{2014} audit.example/log "), "{note}");
        assert_eq!(key.public_key().open(&note).unwrap(), checkpoint());
        assert_eq!(Checkpoint::parse_unverified(&note).unwrap(), checkpoint());
    }

    #[test]
    fn legacy_notes_without_max_unsigned_still_open() {
        let key = SigningKey::generate("log").unwrap();
        let legacy = Checkpoint {
            max_unsigned: None,
            ..checkpoint()
        };
        let note = key.sign(&legacy);
        assert_eq!(note.split("\n\n").next().unwrap().lines().count(), 5);
        assert_eq!(key.public_key().open(&note).unwrap(), legacy);
        let current = key.sign(&checkpoint());
        assert!(current.contains("\ntime 1700000000\nmax-unsigned 1000\n\n"));
        // The bound is signed: raising it breaks the signature.
        let raised = current.replacen("max-unsigned 1000", "max-unsigned 9999", 1);
        assert!(matches!(
            key.public_key().open(&raised),
            Err(Error::BadSignature(_))
        ));
    }

    #[test]
    fn keys_round_trip_as_text() {
        let key = SigningKey::generate("log").unwrap();
        let again = SigningKey::from_text(&key.to_text()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let public = PublicKey::from_text(&key.public_key().to_text()).unwrap();
        assert_eq!(public, key.public_key());
        assert!(key.public_key().to_text().starts_with("log+"));
        let mut text = key.public_key().to_text();
        text.replace_range(4..5, if &text[4..5] == "0" { "1" } else { "0" });
        assert!(PublicKey::from_text(&text).is_err(), "wrong key id");
    }

    #[test]
    fn another_key_or_an_edit_is_refused() {
        let key = SigningKey::generate("log").unwrap();
        let other = SigningKey::generate("log").unwrap();
        let note = key.sign(&checkpoint());
        assert!(matches!(
            other.public_key().open(&note),
            Err(Error::NotSignedBy(_))
        ));
        let edited = note.replacen("\n42\n", "\n41\n", 1);
        assert!(matches!(
            key.public_key().open(&edited),
            Err(Error::BadSignature(_))
        ));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in [
            "log\n42\n",
            "log\n042\nAAAA\nchain AAAA\ntime 1\n",
            "log with space\n1\nAAAA\nchain AAAA\ntime 1\n",
            "log\n1\nAAAA\nchain AAAA\ntime 1\nmax-unsigned x\n",
            "log\n1\nAAAA\nchain AAAA\ntime 1\nother 1\n",
        ] {
            assert!(Checkpoint::parse_body(body).is_err(), "{body:?}");
        }
    }

    fn entry_hashes(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| Sha256::digest(i.to_be_bytes()).into())
            .collect()
    }

    /// A signed checkpoint of the first `size` of `hashes`.
    fn signed(key: &SigningKey, hashes: &[Hash]) -> String {
        let mut tree = merkle::Frontier::new();
        for hash in hashes {
            tree.push(hash);
        }
        key.sign(&Checkpoint {
            origin: "log".into(),
            size: hashes.len() as u64,
            root: tree.root(),
            chain: [0; 32],
            time: 1,
            max_unsigned: None,
            pruned: 0,
        })
    }

    /// The note with one bit of its size or root flipped, keeping the signature.
    fn flip_in_note(note: &str, root: bool, bit: usize) -> String {
        let mut checkpoint = Checkpoint::parse_unverified(note).unwrap();
        if root {
            checkpoint.root[bit / 8 % 32] ^= 1 << (bit % 8);
        } else {
            checkpoint.size ^= 1 << (bit % 64);
        }
        let (_, signatures) = split_note(note).unwrap();
        format!("{}\n{signatures}", checkpoint.body())
    }

    /// Whether a client holding `key` accepts `proof` of entry `sequence` against `note`.
    fn accepts(key: &PublicKey, note: &str, sequence: u64, hash: &Hash, proof: &[Hash]) -> bool {
        key.open(note)
            .is_ok_and(|checkpoint| checkpoint.verify_inclusion(sequence, hash, proof))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// End to end, as a client checks a receipt: any bit flipped in the proof, the root, the
        /// index or the size is rejected.
        #[test]
        fn flipped_bits_in_signed_inclusion_proofs_are_rejected(
            size in 1u64..200,
            index_seed in any::<u64>(),
            target in 0usize..5,
            which in any::<usize>(),
            bit in 0usize..256,
        ) {
            let key = SigningKey::generate("log").unwrap();
            let public = key.public_key();
            let hashes = entry_hashes(size);
            let leaves: Vec<Hash> = hashes.iter().map(merkle::leaf_hash).collect();
            let note = signed(&key, &hashes);
            let index = index_seed % size;
            let mut proof = merkle::inclusion_proof(index, &leaves);
            let hash = hashes[index as usize];
            prop_assert!(accepts(&public, &note, index + 1, &hash, &proof));
            let accepted = match target {
                0 if !proof.is_empty() => {
                    let at = which % proof.len();
                    proof[at][bit / 8 % 32] ^= 1 << (bit % 8);
                    accepts(&public, &note, index + 1, &hash, &proof)
                }
                0 | 1 => accepts(&public, &flip_in_note(&note, true, bit), index + 1, &hash, &proof),
                2 => accepts(&public, &flip_in_note(&note, false, bit), index + 1, &hash, &proof),
                3 => accepts(&public, &note, (index ^ (1 << (bit % 64))) + 1, &hash, &proof),
                _ => {
                    let mut hash = hash;
                    hash[bit / 8 % 32] ^= 1 << (bit % 8);
                    accepts(&public, &note, index + 1, &hash, &proof)
                }
            };
            prop_assert!(!accepted);
        }

        /// Consistency between two signed checkpoints: any bit flipped in the proof, a root or
        /// a size is rejected.
        #[test]
        fn flipped_bits_in_signed_consistency_proofs_are_rejected(
            second in 2u64..200,
            first_seed in any::<u64>(),
            target in 0usize..5,
            which in any::<usize>(),
            bit in 0usize..256,
        ) {
            let key = SigningKey::generate("log").unwrap();
            let public = key.public_key();
            let hashes = entry_hashes(second);
            let leaves: Vec<Hash> = hashes.iter().map(merkle::leaf_hash).collect();
            let first = 1 + first_seed % (second - 1);
            let old = signed(&key, &hashes[..first as usize]);
            let new = signed(&key, &hashes);
            let mut proof = merkle::consistency_proof(first, &leaves);
            let check = |old: &str, new: &str, proof: &[Hash]| {
                match (public.open(old), public.open(new)) {
                    (Ok(old), Ok(new)) => old.verify_consistency(&new, proof),
                    _ => false,
                }
            };
            prop_assert!(check(&old, &new, &proof));
            let accepted = match target {
                0 => {
                    let at = which % proof.len();
                    proof[at][bit / 8 % 32] ^= 1 << (bit % 8);
                    check(&old, &new, &proof)
                }
                1 => check(&flip_in_note(&old, true, bit), &new, &proof),
                2 => check(&old, &flip_in_note(&new, true, bit), &proof),
                3 => check(&flip_in_note(&old, false, bit), &new, &proof),
                _ => check(&old, &flip_in_note(&new, false, bit), &proof),
            };
            prop_assert!(!accepted);
        }
    }
}
