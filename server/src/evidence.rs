//! Tamper evidence over gRPC: signed checkpoints and RFC 6962 Merkle proofs, read from the store.
//! The handlers in `service.rs` check permissions and call these.

use audit_ledger::{Checkpoint, merkle};
use audit_proto::pb;

use crate::config::Limits;
use crate::error::{Error, Violation};
use crate::store::{Store, StoredCheckpoint};

/// The newest checkpoint (or the one of `request.size`) and the public key.
pub async fn get_checkpoint<S: Store>(
    store: &S,
    request: pb::GetCheckpointRequest,
) -> Result<pb::GetCheckpointResponse, Error> {
    let size = (request.size != 0).then_some(request.size);
    let checkpoint = match store.checkpoint(size).await? {
        Some(stored) => Some(to_proto(stored)?),
        None if size.is_some() => {
            return Err(invalid("size", "no checkpoint of this size is stored"));
        }
        None => None,
    };
    Ok(pb::GetCheckpointResponse {
        checkpoint,
        public_key: store.public_key().to_text(),
    })
}

/// One page of checkpoints after `request.after_index`.
pub async fn list_checkpoints<S: Store>(
    store: &S,
    request: pb::ListCheckpointsRequest,
    limits: &Limits,
) -> Result<pb::ListCheckpointsResponse, Error> {
    let limit = match request.page_size {
        0 => limits.default_page_size,
        size => size.min(limits.max_page_size),
    } as usize;
    let checkpoints = store
        .checkpoints(request.after_index, limit)
        .await?
        .into_iter()
        .map(to_proto)
        .collect::<Result<_, _>>()?;
    Ok(pb::ListCheckpointsResponse { checkpoints })
}

/// The Merkle audit path of entry `request.sequence` in the tree of `request.tree_size`.
pub async fn inclusion_proof<S: Store>(
    store: &S,
    request: pb::GetInclusionProofRequest,
) -> Result<pb::GetInclusionProofResponse, Error> {
    let tree_size = tree_size(store, request.tree_size, "tree_size").await?;
    if request.sequence == 0 || request.sequence > tree_size {
        return Err(invalid(
            "sequence",
            format!("must be between 1 and the tree size {tree_size}"),
        ));
    }
    let entry_hash = store
        .entry_hash(request.sequence)
        .await?
        .ok_or_else(|| Error::Internal(format!("entry {} is not stored", request.sequence)))?;
    let ranges = merkle::inclusion_ranges(request.sequence - 1, tree_size);
    let hashes = store.tree_hashes(ranges).await?;
    Ok(pb::GetInclusionProofResponse {
        sequence: request.sequence,
        tree_size,
        entry_hash: entry_hash.to_vec(),
        hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
    })
}

/// The consistency proof from `request.first_size` to `request.second_size`.
pub async fn consistency_proof<S: Store>(
    store: &S,
    request: pb::GetConsistencyProofRequest,
) -> Result<pb::GetConsistencyProofResponse, Error> {
    let second_size = tree_size(store, request.second_size, "second_size").await?;
    if request.first_size > second_size {
        return Err(invalid(
            "first_size",
            format!("must not be larger than the second size {second_size}"),
        ));
    }
    let ranges = merkle::consistency_ranges(request.first_size, second_size);
    let hashes = store.tree_hashes(ranges).await?;
    Ok(pb::GetConsistencyProofResponse {
        first_size: request.first_size,
        second_size,
        hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
    })
}

/// `size`, or the newest checkpoint's size when 0; never beyond the committed head.
async fn tree_size<S: Store>(store: &S, size: u64, field: &str) -> Result<u64, Error> {
    let head = *store.head().borrow();
    if size == 0 {
        let newest = store
            .checkpoint(None)
            .await?
            .ok_or_else(|| invalid(field, "no checkpoint is stored yet: give a size"))?;
        return Ok(Checkpoint::parse_unverified(&newest.note)
            .map_err(|e| Error::Internal(format!("stored checkpoint: {e}")))?
            .size);
    }
    if size > head {
        return Err(invalid(
            field,
            format!("{size} is larger than the log ({head} entries)"),
        ));
    }
    Ok(size)
}

fn to_proto(stored: StoredCheckpoint) -> Result<pb::Checkpoint, Error> {
    let checkpoint = Checkpoint::parse_unverified(&stored.note).map_err(|e| {
        Error::Internal(format!(
            "stored checkpoint {} does not parse: {e}",
            stored.index
        ))
    })?;
    Ok(pb::Checkpoint {
        index: stored.index,
        origin: checkpoint.origin,
        size: checkpoint.size,
        root_hash: checkpoint.root.to_vec(),
        chain_hash: checkpoint.chain.to_vec(),
        time: Some(prost_types::Timestamp {
            seconds: checkpoint.time.min(i64::MAX as u64) as i64,
            nanos: 0,
        }),
        note: stored.note,
    })
}

fn invalid(field: &str, description: impl Into<String>) -> Error {
    Error::InvalidArgument(vec![Violation::new(field, description)])
}
