//! The canonical encoding of an entry, its hash, and the hash chain.
//!
//! Protobuf encoding is not canonical across implementations (field order, default values,
//! unknown fields, map order), so the hash is over an encoding of our own, defined here:
//!
//! ```text
//! entry       = version:u8(=1)
//!               sequence:u64 id:str request_id:str time:opt(ts) received_time:opt(ts)
//!               source:str method:str event:str category:str resource:str
//!               level:i32 outcome:i32 status_code:i32 status_message:str
//!               caller:opt(caller) recorder:opt(recorder) latency:opt(ts)
//!               details:opt(struct) labels:map
//! str         = length:u32 utf8-bytes
//! opt(x)      = 0x00 | 0x01 x
//! ts          = seconds:i64 nanos:i32            (Timestamp and Duration alike)
//! caller      = peer principal:str role:str session_id:str user_agent:str
//! recorder    = peer
//! peer        = 0x00 | 0x01 unix | 0x02 network  (the oneof: none, unix, network)
//! unix        = uid:u32 gid:u32 pid:u32 binary_path:str
//! network     = address:str spiffe_id:str certificate_subject:str
//! map         = count:u32 (key:str value:str)*  (keys in ascending byte order)
//! struct      = count:u32 (key:str value)*      (keys in ascending byte order)
//! value       = 0x00 (unset) | 0x01 null:i32 | 0x02 number:f64-bits:u64 | 0x03 str
//!             | 0x04 bool:u8 | 0x05 struct | 0x06 count:u32 value*
//! ```
//!
//! Integers are big-endian (`i32`/`i64` two's complement). Every field of `AuditEntry` the
//! server stores is covered, in field-number order, including the ones the server fills in
//! (`sequence`, `received_time`, `recorder`, ...); `entry_hash` and `chain_hash` are derived
//! and left out. A new `AuditEntry` field needs a new encoding version (a test fails until it is
//! added).
//!
//! ```text
//! entry_hash(s) = SHA-256("audit.v1/entry\0" || entry)
//! chain(0)      = 32 zero bytes
//! chain(s)      = SHA-256("audit.v1/chain\0" || chain(s-1) || entry_hash(s))
//! ```

use audit_proto::pb::{AuditEntry, Caller, NetworkPeer, Recorder, UnixPeer, caller, recorder};
use prost_types::value::Kind;
use prost_types::{Struct, Value};
use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Version of the canonical encoding: the first byte of every encoded entry.
pub const ENCODING_VERSION: u8 = 1;

/// Domain separation prefix of entry hashes.
pub const ENTRY_TAG: &[u8] = b"audit.v1/entry\0";

/// Domain separation prefix of chain hashes.
pub const CHAIN_TAG: &[u8] = b"audit.v1/chain\0";

/// The chain value before the first entry.
pub const CHAIN_START: Hash = [0; 32];

/// The hash of an entry as stored, its `sequence` included (`entry_hash` and `chain_hash` are
/// ignored).
pub fn entry_hash(entry: &AuditEntry) -> Hash {
    entry_hash_at(entry, entry.sequence)
}

/// The hash of `entry` stored at `sequence` (its own `sequence` field is ignored): saves the
/// writer a copy of each entry.
pub fn entry_hash_at(entry: &AuditEntry, sequence: u64) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(ENTRY_TAG);
    write_entry(&mut hasher, entry, sequence);
    hasher.finalize().into()
}

/// The chain value after an entry: `SHA-256(CHAIN_TAG || previous || entry_hash)`.
pub fn chain_hash(previous: &Hash, entry_hash: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(CHAIN_TAG);
    hasher.update(previous);
    hasher.update(entry_hash);
    hasher.finalize().into()
}

/// The canonical encoding of an entry (see the module documentation), as bytes.
pub fn encode_entry(entry: &AuditEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_entry(&mut out, entry, entry.sequence);
    out
}

/// Where the encoding goes: a buffer, or straight into a hasher.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

struct Encoder<'a, S>(&'a mut S);

impl<S: Sink> Encoder<'_, S> {
    fn u8(&mut self, value: u8) {
        self.0.put(&[value]);
    }

    fn u32(&mut self, value: u32) {
        self.0.put(&value.to_be_bytes());
    }

    fn i32(&mut self, value: i32) {
        self.0.put(&value.to_be_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.0.put(&value.to_be_bytes());
    }

    fn i64(&mut self, value: i64) {
        self.0.put(&value.to_be_bytes());
    }

    fn len(&mut self, len: usize) {
        // Entries are bounded far below 4 GiB by the server's limits.
        self.u32(u32::try_from(len).unwrap_or(u32::MAX));
    }

    fn str(&mut self, value: &str) {
        self.len(value.len());
        self.0.put(value.as_bytes());
    }

    fn opt<T>(&mut self, value: Option<&T>, write: impl FnOnce(&mut Self, &T)) {
        match value {
            None => self.u8(0),
            Some(value) => {
                self.u8(1);
                write(self, value);
            }
        }
    }

    fn time(&mut self, seconds: i64, nanos: i32) {
        self.i64(seconds);
        self.i32(nanos);
    }

    fn unix(&mut self, unix: &UnixPeer) {
        self.u32(unix.uid);
        self.u32(unix.gid);
        self.u32(unix.pid);
        self.str(&unix.binary_path);
    }

    fn network(&mut self, network: &NetworkPeer) {
        self.str(&network.address);
        self.str(&network.spiffe_id);
        self.str(&network.certificate_subject);
    }

    fn caller(&mut self, caller: &Caller) {
        match &caller.peer {
            None => self.u8(0),
            Some(caller::Peer::Unix(unix)) => {
                self.u8(1);
                self.unix(unix);
            }
            Some(caller::Peer::Network(network)) => {
                self.u8(2);
                self.network(network);
            }
        }
        self.str(&caller.principal);
        self.str(&caller.role);
        self.str(&caller.session_id);
        self.str(&caller.user_agent);
    }

    fn recorder(&mut self, recorder: &Recorder) {
        match &recorder.peer {
            None => self.u8(0),
            Some(recorder::Peer::Unix(unix)) => {
                self.u8(1);
                self.unix(unix);
            }
            Some(recorder::Peer::Network(network)) => {
                self.u8(2);
                self.network(network);
            }
        }
    }

    fn structure(&mut self, value: &Struct) {
        // A BTreeMap: iteration is in ascending byte order of the keys.
        self.len(value.fields.len());
        for (key, value) in &value.fields {
            self.str(key);
            self.value(value);
        }
    }

    fn value(&mut self, value: &Value) {
        match &value.kind {
            None => self.u8(0),
            Some(Kind::NullValue(null)) => {
                self.u8(1);
                self.i32(*null);
            }
            Some(Kind::NumberValue(number)) => {
                self.u8(2);
                self.u64(number.to_bits());
            }
            Some(Kind::StringValue(text)) => {
                self.u8(3);
                self.str(text);
            }
            Some(Kind::BoolValue(flag)) => {
                self.u8(4);
                self.u8(u8::from(*flag));
            }
            Some(Kind::StructValue(inner)) => {
                self.u8(5);
                self.structure(inner);
            }
            Some(Kind::ListValue(list)) => {
                self.u8(6);
                self.len(list.values.len());
                for item in &list.values {
                    self.value(item);
                }
            }
        }
    }
}

fn write_entry(sink: &mut impl Sink, entry: &AuditEntry, sequence: u64) {
    let mut e = Encoder(sink);
    e.u8(ENCODING_VERSION);
    e.u64(sequence);
    e.str(&entry.id);
    e.str(&entry.request_id);
    e.opt(entry.time.as_ref(), |e, t| e.time(t.seconds, t.nanos));
    e.opt(entry.received_time.as_ref(), |e, t| {
        e.time(t.seconds, t.nanos)
    });
    e.str(&entry.source);
    e.str(&entry.method);
    e.str(&entry.event);
    e.str(&entry.category);
    e.str(&entry.resource);
    e.i32(entry.level);
    e.i32(entry.outcome);
    e.i32(entry.status_code);
    e.str(&entry.status_message);
    e.opt(entry.caller.as_ref(), Encoder::caller);
    e.opt(entry.recorder.as_ref(), Encoder::recorder);
    e.opt(entry.latency.as_ref(), |e, d| e.time(d.seconds, d.nanos));
    e.opt(entry.details.as_ref(), Encoder::structure);
    e.len(entry.labels.len());
    for (key, value) in &entry.labels {
        e.str(key);
        e.str(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_types::{FileDescriptorSet, Timestamp};

    fn sample() -> AuditEntry {
        AuditEntry {
            id: "0190b5a8-0000-7000-8000-000000000001".into(),
            sequence: 7,
            request_id: "r".into(),
            time: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            source: "billing".into(),
            method: "/a.B/C".into(),
            outcome: 1,
            labels: [("b".to_string(), "2".to_string()), ("a".into(), "1".into())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn encoding_is_fixed() {
        // The exact bytes are the contract: any change here breaks every stored chain.
        let bytes = encode_entry(&AuditEntry {
            sequence: 1,
            id: "i".into(),
            ..Default::default()
        });
        let mut expected = vec![1u8];
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 1, b'i']);
        expected.extend_from_slice(&[0, 0, 0, 0]); // request_id
        expected.extend_from_slice(&[0, 0]); // time, received_time
        expected.extend_from_slice(&[0; 5 * 4]); // source .. resource
        expected.extend_from_slice(&[0; 3 * 4]); // level, outcome, status_code
        expected.extend_from_slice(&[0; 4]); // status_message
        expected.extend_from_slice(&[0, 0, 0, 0]); // caller, recorder, latency, details
        expected.extend_from_slice(&[0; 4]); // labels
        assert_eq!(bytes, expected);
        assert_eq!(
            hex(&entry_hash(&AuditEntry {
                sequence: 1,
                id: "i".into(),
                ..Default::default()
            })),
            hex(&Sha256::digest([ENTRY_TAG, &expected].concat()).into())
        );
    }

    #[test]
    fn every_stored_field_changes_the_hash() {
        let base = entry_hash(&sample());
        let mut changed = sample();
        changed.sequence = 8;
        assert_ne!(entry_hash(&changed), base);
        let mut changed = sample();
        changed.labels.insert("a".into(), "x".into());
        assert_ne!(entry_hash(&changed), base);
        let mut changed = sample();
        changed.received_time = Some(Timestamp::default());
        assert_ne!(entry_hash(&changed), base);
        // Moving bytes between adjacent strings changes the hash (length prefixes).
        let mut a = sample();
        a.event = "ab".into();
        let mut b = sample();
        b.event = "a".into();
        b.category = "b".into();
        assert_ne!(entry_hash(&a), entry_hash(&b));
    }

    #[test]
    fn derived_hash_fields_are_ignored() {
        let mut with = sample();
        with.entry_hash = vec![1; 32];
        with.chain_hash = vec![2; 32];
        assert_eq!(entry_hash(&with), entry_hash(&sample()));
    }

    #[test]
    fn chain_links_entries() {
        let a = chain_hash(&CHAIN_START, &[1; 32]);
        let b = chain_hash(&a, &[2; 32]);
        assert_ne!(a, b);
        assert_ne!(chain_hash(&CHAIN_START, &[2; 32]), b);
    }

    /// A new field of `AuditEntry` must be added to the encoding (with a new version).
    #[test]
    fn encoding_covers_every_entry_field() {
        let set = FileDescriptorSet::decode(audit_proto::FILE_DESCRIPTOR_SET).unwrap();
        let entry = set
            .file
            .iter()
            .filter(|f| f.package() == "audit.v1")
            .flat_map(|f| &f.message_type)
            .find(|m| m.name() == "AuditEntry")
            .unwrap();
        let mut numbers: Vec<i32> = entry.field.iter().map(|f| f.number()).collect();
        numbers.sort();
        // 1..=19 are encoded; 20 (entry_hash) and 21 (chain_hash) are derived.
        assert_eq!(numbers, (1..=21).collect::<Vec<_>>());
    }

    fn hex(hash: &Hash) -> String {
        hash.iter().map(|b| format!("{b:02x}")).collect()
    }
}
