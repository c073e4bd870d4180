//! Verification against a running server, and receipt and checkpoint checks with proofs.

use audit_ledger::{Checkpoint, Hash, PublicKey};
use audit_proto::pb;

use super::{KeySource, Report, Trust, Verifier};
use crate::{Client, Error};

/// Entries asked for per page while verifying.
const PAGE_SIZE: u32 = 1000;

/// Verifies a running server's log: reads every checkpoint (`ListCheckpoints`) and every entry
/// (`Query`, oldest first) and checks them as [`verify_data_dir`](super::verify_data_dir) does,
/// except for the store's indexed columns, which only the data directory shows.
///
/// Fails only when the server cannot be asked; tampering is reported in the [`Report`].
pub async fn verify_server(client: &Client, trust: &Trust) -> Result<Report, Error> {
    let (key, source) = match &trust.public_key {
        Some(key) => (key.clone(), KeySource::Trusted),
        None => (server_key(client).await?, KeySource::Server),
    };
    let mut verifier = Verifier::new(key, source);
    for note in &trust.checkpoints {
        verifier.trusted_checkpoint(note);
    }
    // The head before the checkpoints are listed: the server signs a checkpoint in the commit
    // that makes one due, so the list covers this head to within its bound.
    let newest = client
        .query_page(pb::QueryRequest {
            filter: None,
            page_size: 1,
            page_token: String::new(),
            order: pb::Order::Descending.into(),
        })
        .await?;
    verifier.bound_tail_through(newest.entries.first().map_or(0, |e| e.sequence));
    let mut after_index = 0;
    loop {
        let page = client.checkpoints(after_index, PAGE_SIZE).await?;
        let Some(last) = page.last() else { break };
        after_index = last.index;
        for checkpoint in &page {
            verifier.checkpoint(checkpoint.index, &checkpoint.note, Some(checkpoint.size));
        }
    }

    // Retention removed the content of entries up to its signed horizon and the server
    // returns none of them: start from the checkpoint of that size instead.
    let mut after = 0u64;
    let horizon = verifier.horizon();
    if horizon > 0 {
        match resume_point(client, verifier.key(), horizon).await {
            Ok((checkpoint, tree)) => {
                verifier.resume_at(&checkpoint, tree);
                after = horizon;
            }
            Err(reason) => verifier.problem(horizon, reason),
        }
    }

    // Entries committed while verifying are checked too, up to the end.
    let mut token = String::new();
    let mut page_size = PAGE_SIZE;
    'pages: while verifier.wants_entries() {
        let request = pb::QueryRequest {
            filter: None,
            page_size,
            page_token: token.clone(),
            order: pb::Order::Ascending.into(),
        };
        let page = match client.query_page(request).await {
            Ok(page) => page,
            // One entry the server cannot read spoils its page: go one entry at a time to name
            // it.
            Err(error) if error.code() == Some(tonic::Code::Internal) && page_size > 1 => {
                page_size = 1;
                continue;
            }
            Err(error) if error.code() == Some(tonic::Code::Internal) => {
                verifier.problem(
                    after + 1,
                    format!("the server cannot read the entry: {error}"),
                );
                break;
            }
            Err(error) => return Err(error),
        };
        for entry in &page.entries {
            if !verifier.entry(entry) {
                break 'pages;
            }
            after = entry.sequence;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Ok(verifier.finish())
}

/// The checkpoint of size `horizon` and the Merkle tree of its entries, rebuilt from the
/// inclusion proof of its last entry and checked against its signed root.
async fn resume_point(
    client: &Client,
    key: &PublicKey,
    horizon: u64,
) -> Result<(Checkpoint, audit_ledger::merkle::Frontier), String> {
    let response = client
        .checkpoint_response(horizon)
        .await
        .map_err(|e| format!("cannot read the checkpoint of size {horizon}: {e}"))?;
    let note = response
        .checkpoint
        .ok_or_else(|| format!("no checkpoint of size {horizon}, where retention pruned to"))?
        .note;
    let checkpoint = key
        .open(&note)
        .map_err(|e| format!("the checkpoint of size {horizon}: {e}"))?;
    if checkpoint.size != horizon {
        return Err(format!(
            "asked for the checkpoint of size {horizon}, got one of size {}",
            checkpoint.size
        ));
    }
    let proof = client
        .inclusion_proof(horizon, horizon)
        .await
        .map_err(|e| format!("cannot prove entry {horizon}: {e}"))?;
    let entry_hash: Hash = proof
        .entry_hash
        .as_slice()
        .try_into()
        .map_err(|_| "a proof hash is not 32 bytes".to_string())?;
    let path = hashes(&proof.hashes).map_err(|e| e.to_string())?;
    audit_ledger::merkle::Frontier::from_right_edge(horizon, &entry_hash, &path)
        .filter(|tree| tree.root() == checkpoint.root)
        .map(|tree| (checkpoint.clone(), tree))
        .ok_or_else(|| {
            format!(
                "the hashes of the pruned entries 1 to {horizon} do not match the checkpoint \
                 of that size"
            )
        })
}

/// The public key the server presents.
async fn server_key(client: &Client) -> Result<PublicKey, Error> {
    let response = client.checkpoint_response(0).await?;
    PublicKey::from_text(&response.public_key)
        .map_err(|e| Error::Unverifiable(format!("the server's public key: {e}")))
}

/// Checks that the entry `sequence` with hash `entry_hash` (from a receipt) is in the log, with
/// an inclusion proof to the server's newest checkpoint, signed by `key`. Returns that
/// checkpoint.
pub async fn check_inclusion(
    client: &Client,
    key: &PublicKey,
    sequence: u64,
    entry_hash: &Hash,
) -> Result<Checkpoint, Error> {
    let checkpoint = newest_checkpoint(client, key).await?;
    let proof = client.inclusion_proof(sequence, checkpoint.size).await?;
    let hashes = hashes(&proof.hashes)?;
    if proof.tree_size != checkpoint.size
        || !checkpoint.verify_inclusion(sequence, entry_hash, &hashes)
    {
        return Err(Error::Unverifiable(format!(
            "entry {sequence} with this hash is not in the log signed at size {}",
            checkpoint.size
        )));
    }
    Ok(checkpoint)
}

/// Checks that the log signed by `older` (a note kept from earlier) only grew up to the
/// server's newest checkpoint, with a consistency proof. Returns the newest checkpoint.
pub async fn check_consistency(
    client: &Client,
    key: &PublicKey,
    older: &str,
) -> Result<Checkpoint, Error> {
    let older = key
        .open(older)
        .map_err(|e| Error::Unverifiable(format!("the earlier checkpoint: {e}")))?;
    let newest = newest_checkpoint(client, key).await?;
    if newest.size < older.size {
        return Err(Error::Unverifiable(format!(
            "the server's newest checkpoint signs {} entries, fewer than the earlier one ({})",
            newest.size, older.size
        )));
    }
    let proof = client.consistency_proof(older.size, newest.size).await?;
    if !older.verify_consistency(&newest, &hashes(&proof.hashes)?) {
        return Err(Error::Unverifiable(format!(
            "the log at size {} is not an extension of the log at size {}",
            newest.size, older.size
        )));
    }
    Ok(newest)
}

async fn newest_checkpoint(client: &Client, key: &PublicKey) -> Result<Checkpoint, Error> {
    let response = client.checkpoint_response(0).await?;
    let note = response
        .checkpoint
        .ok_or_else(|| Error::Unverifiable("the server has no checkpoint yet".into()))?
        .note;
    key.open(&note)
        .map_err(|e| Error::Unverifiable(format!("the server's checkpoint: {e}")))
}

fn hashes(raw: &[Vec<u8>]) -> Result<Vec<Hash>, Error> {
    raw.iter()
        .map(|h| {
            h.as_slice()
                .try_into()
                .map_err(|_| Error::Unverifiable("a proof hash is not 32 bytes".into()))
        })
        .collect()
}
