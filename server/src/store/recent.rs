//! The newest committed entries, kept in memory so that live subscribers read the tail of the
//! log without a query each. The writer adds each commit's entries before it publishes the new
//! head; reads that fall inside the window are answered from it, the rest go to the database.
//! It only ever holds a gapless run of sequences exactly as stored, so a read answered here is
//! the read the database would answer.
//!
//! Many subscribers read it while the writer adds to it, so the lock is held only to find the
//! entries: a read takes shared handles under a read lock and copies them after releasing it,
//! and the writer prepares what it adds before it takes the write lock.

use std::collections::VecDeque;
use std::sync::Arc;

use audit_proto::pb::AuditEntry;
use prost::Message;

use super::filter::matches;
use super::{Direction, Page, Read};

/// Most entries kept: a fraction of a second of a busy log, enough for subscribers that keep up.
pub const MAX_ENTRIES: usize = 4096;
/// Most encoded bytes kept, whatever the entries' size.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;

/// A window of the newest committed entries, oldest first, with consecutive sequences.
pub struct Recent {
    entries: VecDeque<Kept>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

/// An entry ready to be added to the window.
pub struct Kept {
    entry: Arc<AuditEntry>,
    /// Encoded size as stored (what a database read counts against its byte limit).
    bytes: usize,
}

impl Kept {
    /// A committed entry stored with `sequence` (its `sequence` field still 0, as in the
    /// database).
    pub fn new(mut entry: AuditEntry, sequence: u64) -> Self {
        let bytes = entry.encoded_len();
        entry.sequence = sequence;
        Kept {
            entry: Arc::new(entry),
            bytes,
        }
    }
}

/// A page answered from the window: shared handles to its entries, copied by [`Self::into_page`]
/// once the window's lock is released.
pub struct SharedPage {
    entries: Vec<Arc<AuditEntry>>,
    exhausted: bool,
}

impl SharedPage {
    /// The page with its own copies of the entries.
    pub fn into_page(self) -> Page {
        Page {
            entries: self.entries.iter().map(|e| AuditEntry::clone(e)).collect(),
            exhausted: self.exhausted,
        }
    }
}

impl Recent {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Recent {
            entries: VecDeque::new(),
            bytes: 0,
            max_entries: max_entries.max(1),
            max_bytes,
        }
    }

    /// Adds a committed entry. An entry that does not follow the newest one starts a new window.
    pub fn push(&mut self, kept: Kept) {
        if self
            .last()
            .is_some_and(|last| last + 1 != kept.entry.sequence)
        {
            self.clear();
        }
        self.bytes += kept.bytes;
        self.entries.push_back(kept);
        while self.entries.len() > self.max_entries
            || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.bytes;
            }
        }
    }

    /// Forgets everything; later reads go to the database until new commits arrive.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn first(&self) -> Option<u64> {
        self.entries.front().map(|kept| kept.entry.sequence)
    }

    fn last(&self) -> Option<u64> {
        self.entries.back().map(|kept| kept.entry.sequence)
    }

    /// Answers an ascending read whose whole range, `after` (exclusive) to `through`, is in the
    /// window; `None` otherwise. Same page and `exhausted` rules as the database read.
    pub fn read(&self, read: &Read) -> Option<SharedPage> {
        let Direction::Ascending { after } = read.direction else {
            return None;
        };
        let (first, last) = (self.first()?, self.last()?);
        if after.saturating_add(1) < first || read.through > last {
            return None;
        }
        let mut page = SharedPage {
            entries: Vec::new(),
            exhausted: true,
        };
        let mut bytes = 0;
        let start = usize::try_from(after.saturating_add(1) - first).ok()?;
        for kept in self.entries.range(start.min(self.entries.len())..) {
            if kept.entry.sequence > read.through {
                break;
            }
            if !matches(&read.filter, &kept.entry) {
                continue;
            }
            if page.entries.len() == read.limit
                || (bytes >= read.max_bytes && !page.entries.is_empty())
            {
                page.exhausted = false;
                break;
            }
            bytes += kept.bytes;
            page.entries.push(kept.entry.clone());
        }
        Some(page)
    }
}

#[cfg(test)]
mod tests {
    use audit_proto::pb::Filter;

    use super::*;

    fn entry(source: &str) -> AuditEntry {
        AuditEntry {
            source: source.into(),
            ..Default::default()
        }
    }

    fn ascending(after: u64, through: u64, limit: usize) -> Read {
        Read {
            filter: Filter::default(),
            direction: Direction::Ascending { after },
            through,
            limit,
            max_bytes: usize::MAX,
        }
    }

    fn sequences(page: &SharedPage) -> Vec<u64> {
        page.entries.iter().map(|e| e.sequence).collect()
    }

    fn push(recent: &mut Recent, entry: AuditEntry, sequence: u64) {
        recent.push(Kept::new(entry, sequence));
    }

    #[test]
    fn answers_only_reads_inside_the_window() {
        let mut recent = Recent::new(3, usize::MAX);
        for sequence in 1..=5 {
            push(&mut recent, entry("a"), sequence);
        }
        // Holds 3..=5.
        assert!(recent.read(&ascending(1, 5, 10)).is_none(), "2 was evicted");
        let page = recent.read(&ascending(2, 5, 10)).expect("in window");
        assert_eq!(sequences(&page), [3, 4, 5]);
        assert!(page.exhausted);
        assert!(recent.read(&ascending(4, 6, 10)).is_none(), "6 not held");
        let page = recent.read(&ascending(5, 5, 10)).expect("empty range");
        assert!(page.entries.is_empty());
    }

    #[test]
    fn pages_like_the_database() {
        let mut recent = Recent::new(100, usize::MAX);
        for sequence in 11..=20 {
            push(
                &mut recent,
                entry(if sequence % 2 == 0 { "even" } else { "odd" }),
                sequence,
            );
        }
        let mut read = ascending(10, 20, 3);
        read.filter.source = "even".into();
        let page = recent.read(&read).expect("in window");
        assert_eq!(sequences(&page), [12, 14, 16]);
        assert!(!page.exhausted);
        read.direction = Direction::Ascending { after: 16 };
        let page = recent.read(&read).expect("in window");
        assert_eq!(sequences(&page), [18, 20]);
        assert!(page.exhausted);
        read.direction = Direction::Descending { before: None };
        assert!(recent.read(&read).is_none());
    }

    #[test]
    fn a_gap_starts_a_new_window() {
        let mut recent = Recent::new(100, usize::MAX);
        push(&mut recent, entry("a"), 1);
        push(&mut recent, entry("a"), 2);
        push(&mut recent, entry("a"), 7);
        assert!(recent.read(&ascending(0, 7, 10)).is_none());
        assert_eq!(sequences(&recent.read(&ascending(6, 7, 10)).unwrap()), [7]);
    }

    #[test]
    fn bytes_bound_the_window() {
        let mut recent = Recent::new(100, 1);
        push(&mut recent, entry("a"), 1);
        push(&mut recent, entry("b"), 2);
        assert!(recent.read(&ascending(0, 2, 10)).is_none());
        assert_eq!(sequences(&recent.read(&ascending(1, 2, 10)).unwrap()), [2]);
    }
}
