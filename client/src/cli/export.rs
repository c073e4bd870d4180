//! `audit export`: writes a self-verifying archive (see [`audit_client::verify::archive`]).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead as _, BufReader, BufWriter, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail, ensure};
use audit_client::verify::archive::{self, Manifest, ProofKind, RangeProof, Trailer};
use audit_client::verify::{Checkpoint, Hash, PublicKey};
use audit_client::{Client, QueryOptions, RetryPolicy, Start, json, pb};
use audit_ledger::merkle::{self, Frontier};
use clap::Args;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};

use super::filter::FilterArgs;
use super::verify::read_public_key;
use writer::{ArchiveWriter, Removed, entry_json, sibling, with_proof};

mod writer;

/// A filtered export with at most this many entries asks the server for each inclusion proof
/// (each costs the server a read of the whole tree's hashes); more are computed here in one
/// pass over the log.
const SERVER_PROOFS: usize = 8;
/// Entries asked for per page.
const PAGE_SIZE: u32 = 1000;

/// Write a self-verifying archive of the log: JSON lines (zstd-compressed when FILE ends in
/// `.zst`) pinned to the newest signed checkpoint, with the proofs that tie every entry to it.
/// Check it later, offline, with `audit verify --archive FILE --public-key KEY`.
///
/// Without filters, exports every entry from `--from-sequence` (1) to `--to-sequence` (the
/// checkpoint's size) with one range proof. With filters, exports the matching entries each
/// with its inclusion proof. Entries committed after the checkpoint are left out, so the export
/// is consistent while writers keep writing.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The archive to write; it must not exist yet.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
    /// First sequence of an unfiltered export (default: the oldest entry retention kept).
    #[arg(long, value_name = "SEQUENCE")]
    from_sequence: Option<u64>,
    /// Last sequence of an unfiltered export (default: the checkpoint's size).
    #[arg(long, value_name = "SEQUENCE")]
    to_sequence: Option<u64>,
    /// The log's public key, `<name>+<id>+<base64>` or a file holding it: the server's
    /// checkpoint must be signed by it (default: trust the key the server presents).
    #[arg(long, value_name = "KEY|FILE")]
    public_key: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
}

/// Exports what `args` select from the server `client` reaches.
pub async fn run(client: Client, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let filter = args.filter.to_filter();
    let filtered = filter != pb::Filter::default();
    if filtered && (args.from_sequence.is_some() || args.to_sequence.is_some()) {
        bail!(
            "--from-sequence and --to-sequence select a contiguous range: they cannot be \
             combined with filters"
        );
    }
    if args.output.exists() {
        bail!(
            "--output {} already exists: remove it or choose another file",
            args.output.display()
        );
    }
    let given_key = args
        .public_key
        .as_deref()
        .map(read_public_key)
        .transpose()?;
    let response = client.checkpoint_response(0).await?;
    let note = response
        .checkpoint
        .context("the server has not signed a checkpoint yet: nothing to export")?
        .note;
    let key = match given_key {
        Some(key) => key,
        None => PublicKey::from_text(&response.public_key)
            .context("the server presents no valid public key")?,
    };
    let checkpoint = key
        .open(&note)
        .context("the server's newest checkpoint is refused")?;
    ensure!(
        checkpoint.size > 0,
        "the newest signed checkpoint covers no entries: nothing to export"
    );
    let manifest = Manifest {
        format: archive::FORMAT.into(),
        version: archive::VERSION,
        created: prost_types::Timestamp::from(std::time::SystemTime::now()).to_string(),
        key: key
            .to_text()
            .splitn(3, '+')
            .take(2)
            .collect::<Vec<_>>()
            .join("+"),
        checkpoint: note,
        filter: serde_json::from_str(&json::to_json(&filter)?)?,
        proof: if filtered {
            ProofKind::Inclusion
        } else {
            ProofKind::Range
        },
        range: None,
    };
    let pinned = Pinned {
        client,
        checkpoint,
        progress: progress_bar(),
    };
    let trailer = if filtered {
        pinned
            .export_filtered(&args.output, manifest, filter, key)
            .await?
    } else {
        // By default from the oldest entry retention kept, as the checkpoint signs it.
        let first = args.from_sequence.unwrap_or(pinned.checkpoint.pruned + 1);
        let last = args.to_sequence.unwrap_or(pinned.checkpoint.size);
        pinned
            .export_range(&args.output, manifest, first, last, key)
            .await?
    };
    pinned.progress.finish_and_clear();
    println!(
        "exported {} entries ({} to {}) to {}, pinned to the checkpoint of size {}",
        trailer.entries,
        trailer.first_sequence,
        trailer.last_sequence,
        args.output.display(),
        pinned.checkpoint.size
    );
    Ok(ExitCode::SUCCESS)
}

/// A bar on stderr when it is a terminal; hidden otherwise.
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:18} [{wide_bar}] {pos}/{len} ({per_sec}, {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// An export pinned to one verified checkpoint.
struct Pinned {
    client: Client,
    checkpoint: Checkpoint,
    progress: ProgressBar,
}

impl Pinned {
    /// Entries `first..=last`, unfiltered, with their range proof.
    async fn export_range(
        &self,
        output: &Path,
        mut manifest: Manifest,
        first: u64,
        last: u64,
        key: PublicKey,
    ) -> anyhow::Result<Trailer> {
        let size = self.checkpoint.size;
        ensure!(first >= 1, "--from-sequence must be at least 1");
        ensure!(
            last <= size,
            "--to-sequence {last} is beyond the newest signed checkpoint ({size} entries): \
             entries after it are not signed yet"
        );
        ensure!(
            first <= last,
            "--from-sequence {first} is after the last entry to export ({last})"
        );
        manifest.range = Some(RangeProof {
            first,
            last,
            left: archive::encode_hashes(&self.left_edge(first - 1).await?),
            right: archive::encode_hashes(&self.right_proof(last).await?),
        });
        let mut writer = ArchiveWriter::create(output, key)?;
        writer.line(&serde_json::to_string(&manifest)?)?;
        self.progress.set_length(last - first + 1);
        self.progress.set_message("exporting entries");
        let mut entries = self.client.subscribe_with(
            pb::Filter::default(),
            Start::AfterSequence(first - 1),
            RetryPolicy::default(),
        );
        while let Some(entry) = entries.next().await {
            let entry = entry?;
            writer.entry(&entry)?;
            self.progress.inc(1);
            if entry.sequence >= last {
                break;
            }
        }
        writer.finish()
    }

    /// The roots of the perfect subtrees of the first `before` entries, largest first: the
    /// left siblings on the inclusion path of entry `before + 1`.
    async fn left_edge(&self, before: u64) -> anyhow::Result<Vec<Hash>> {
        if before == 0 {
            return Ok(Vec::new());
        }
        let size = self.checkpoint.size;
        let proof = self.client.inclusion_proof(before + 1, size).await?;
        archive::left_edge(before, size, &hashes(&proof.hashes)?).with_context(|| {
            format!(
                "the server's inclusion proof of entry {} has {} hashes, not one per level",
                before + 1,
                proof.hashes.len()
            )
        })
    }

    /// The consistency proof from `last` entries to the checkpoint.
    async fn right_proof(&self, last: u64) -> anyhow::Result<Vec<Hash>> {
        let size = self.checkpoint.size;
        if last == size {
            return Ok(Vec::new());
        }
        hashes(&self.client.consistency_proof(last, size).await?.hashes)
    }

    /// The entries matching `filter`, each with its inclusion proof.
    async fn export_filtered(
        &self,
        output: &Path,
        manifest: Manifest,
        filter: pb::Filter,
        key: PublicKey,
    ) -> anyhow::Result<Trailer> {
        let size = self.checkpoint.size;
        // The matching entries wait in a spool beside the output until their proofs are known.
        let spool_path = sibling(output, "entries");
        let spool = Removed(spool_path.clone());
        let mut spool_file = BufWriter::new(
            File::create(&spool.0)
                .with_context(|| format!("cannot create {}", spool.0.display()))?,
        );
        self.progress.set_length(size);
        self.progress.set_message("selecting entries");
        let mut sequences = Vec::new();
        let options = QueryOptions::new()
            .order(pb::Order::Ascending)
            .page_size(PAGE_SIZE);
        let mut matching = self.client.query(filter, options);
        while let Some(entry) = matching.next().await {
            let entry = entry?;
            if entry.sequence > size {
                break;
            }
            writeln!(spool_file, "{}", entry_json(&entry)?)?;
            sequences.push(entry.sequence);
            self.progress.set_position(entry.sequence);
        }
        drop(matching);
        spool_file.flush()?;
        drop(spool_file);

        let proofs = self.inclusion_proofs(&sequences).await?;
        let mut writer = ArchiveWriter::create(output, key)?;
        writer.line(&serde_json::to_string(&manifest)?)?;
        self.progress.set_length(sequences.len() as u64);
        self.progress.set_position(0);
        self.progress.set_message("writing entries");
        let lines = BufReader::new(File::open(&spool_path)?).lines();
        for (index, line) in lines.enumerate() {
            let line = line?;
            let proof = proofs.proof(index, sequences[index], size);
            writer.entry_line(&with_proof(&line, &proof)?, sequences[index])?;
            self.progress.inc(1);
        }
        writer.finish()
    }

    /// The inclusion proofs of `sequences` in the checkpoint's tree, fetched from the server
    /// when they are few, else computed from one pass over the log's entry hashes.
    async fn inclusion_proofs(&self, sequences: &[u64]) -> anyhow::Result<Proofs> {
        let size = self.checkpoint.size;
        if sequences.len() <= SERVER_PROOFS {
            let mut proofs = Vec::with_capacity(sequences.len());
            for &sequence in sequences {
                proofs.push(hashes(
                    &self.client.inclusion_proof(sequence, size).await?.hashes,
                )?);
            }
            return Ok(Proofs::Fetched(proofs));
        }
        // Every proof is a list of subtrees of the one tree of `size` leaves; each leaf lies in
        // at most one subtree per level, so few are being hashed at a time.
        let wanted: BTreeSet<(u64, u64)> = sequences
            .iter()
            .flat_map(|&sequence| merkle::inclusion_ranges(sequence - 1, size))
            .map(|range| (range.start, range.end))
            .collect();
        let mut waiting = wanted.into_iter().peekable();
        let mut open: Vec<((u64, u64), Frontier)> = Vec::new();
        let mut roots = HashMap::new();
        self.progress.set_length(size);
        self.progress.set_position(0);
        self.progress.set_message("hashing for proofs");
        let options = QueryOptions::new()
            .order(pb::Order::Ascending)
            .page_size(PAGE_SIZE);
        let mut all = self.client.query(pb::Filter::default(), options);
        let mut leaf = 0u64;
        while leaf < size {
            let entry = all.next().await.with_context(|| {
                format!("the log ended at entry {leaf}, before the checkpoint")
            })??;
            ensure!(
                entry.sequence == leaf + 1,
                "the server sent entry {} where entry {} was due",
                entry.sequence,
                leaf + 1
            );
            let hash: Hash = entry.entry_hash.as_slice().try_into().with_context(|| {
                format!("the server sent entry {} without its entry hash", leaf + 1)
            })?;
            while let Some(range) = waiting.next_if(|range| range.0 == leaf) {
                open.push((range, Frontier::new()));
            }
            for (_, tree) in &mut open {
                tree.push(&hash);
            }
            leaf += 1;
            open.retain(|(range, tree)| {
                let done = range.1 == leaf;
                if done {
                    roots.insert(*range, tree.root());
                }
                !done
            });
            self.progress.set_position(leaf);
        }
        Ok(Proofs::Computed(roots))
    }
}

/// Inclusion proofs, as fetched or as subtree roots to assemble.
enum Proofs {
    /// One proof per exported entry, in order.
    Fetched(Vec<Vec<Hash>>),
    /// The root of every subtree any proof needs.
    Computed(HashMap<(u64, u64), Hash>),
}

impl Proofs {
    /// The proof of the `index`th exported entry, `sequence`.
    fn proof(&self, index: usize, sequence: u64, size: u64) -> Vec<Hash> {
        match self {
            Proofs::Fetched(proofs) => proofs[index].clone(),
            Proofs::Computed(roots) => merkle::inclusion_ranges(sequence - 1, size)
                .into_iter()
                .map(|range| roots[&(range.start, range.end)])
                .collect(),
        }
    }
}

fn hashes(raw: &[Vec<u8>]) -> anyhow::Result<Vec<Hash>> {
    raw.iter()
        .map(|h| {
            h.as_slice()
                .try_into()
                .context("the server sent a proof hash that is not 32 bytes")
        })
        .collect()
}
