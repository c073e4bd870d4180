//! The gRPC handlers of `audit.v1.AuditService`: thin adapters from requests to validation, the
//! store and the hub.

use std::collections::HashMap;
use std::sync::Arc;

use audit_proto::pb::{
    GetCheckpointRequest, GetCheckpointResponse, GetConsistencyProofRequest,
    GetConsistencyProofResponse, GetInclusionProofRequest, GetInclusionProofResponse,
    HashValueRequest, HashValueResponse, ListCheckpointsRequest, ListCheckpointsResponse,
    ListForwardersRequest, ListForwardersResponse, Order, QueryRequest, QueryResponse,
    RecordBatchRequest, RecordBatchResponse, RecordRequest, RecordResponse, SubscribeRequest,
    audit_service_server, start_position::Position,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use audit_identity::Peer;

use crate::access::Access;
use crate::config::Limits;
use crate::error::{Error, Violation};
use crate::evidence;
use crate::forward::status::Forwarders;
use crate::guard::RefusalRecorder;
use crate::hub::{Hub, SubscriptionStream};
use crate::page_token;
use crate::policy::Permission;
use crate::redaction;
use crate::store::{Direction, Read, Store};
use crate::validate::{self, Context, timestamp_nanos};

/// Full names of the service's methods, as recorded in refusals.
const RECORD: &str = "/audit.v1.AuditService/Record";
const RECORD_BATCH: &str = "/audit.v1.AuditService/RecordBatch";
const SUBSCRIBE: &str = "/audit.v1.AuditService/Subscribe";
const QUERY: &str = "/audit.v1.AuditService/Query";
const GET_CHECKPOINT: &str = "/audit.v1.AuditService/GetCheckpoint";
const LIST_CHECKPOINTS: &str = "/audit.v1.AuditService/ListCheckpoints";
const GET_INCLUSION_PROOF: &str = "/audit.v1.AuditService/GetInclusionProof";
const GET_CONSISTENCY_PROOF: &str = "/audit.v1.AuditService/GetConsistencyProof";
const LIST_FORWARDERS: &str = "/audit.v1.AuditService/ListForwarders";
const HASH_VALUE: &str = "/audit.v1.AuditService/HashValue";

/// The audit service over a store.
pub struct AuditService<S> {
    store: S,
    hub: Hub<S>,
    limits: Arc<Limits>,
    access: Arc<Access>,
    refusals: RefusalRecorder<S>,
    forwarders: Forwarders,
}

impl<S: Store + Clone> AuditService<S> {
    /// The service storing into `store`, streaming through `hub`, guarded by `access`.
    pub fn new(store: S, hub: Hub<S>, limits: Arc<Limits>, access: Arc<Access>) -> Self {
        Self {
            refusals: RefusalRecorder::new(store.clone(), limits.clone()),
            store,
            hub,
            limits,
            access,
            forwarders: Forwarders::default(),
        }
    }

    /// Reports `forwarders` in `ListForwarders` (none by default).
    pub fn with_forwarders(mut self, forwarders: Forwarders) -> Self {
        self.forwarders = forwarders;
        self
    }

    /// The caller of `request` if it may call `method`; a refusal is recorded as a DENIED entry
    /// before it is answered.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        method: &str,
        permission: Permission,
    ) -> Result<Peer, Status> {
        let refusal = match self.access.check(request, method, permission) {
            Ok(peer) => return Ok(peer),
            Err(refusal) => refusal,
        };
        self.refusals.record(&refusal).await;
        Err(refusal.status)
    }

    /// What the server adds to entries from `peer`: when they arrived and who sent them.
    fn context(peer: &Peer) -> Context {
        let recorder = peer.to_recorder();
        Context {
            received_time: validate::now(),
            recorder: recorder.peer.is_some().then_some(recorder),
        }
    }
}

#[tonic::async_trait]
impl<S: Store + Clone> audit_service_server::AuditService for AuditService<S> {
    async fn record(
        &self,
        request: Request<RecordRequest>,
    ) -> Result<Response<RecordResponse>, Status> {
        let peer = self.authorize(&request, RECORD, Permission::Record).await?;
        let context = Self::context(&peer);
        let Some(entry) = request.into_inner().entry else {
            return Err(Error::InvalidArgument(vec![Violation::new("entry", "required")]).into());
        };
        let mut new = validate::entry(entry, "entry", None, &context, &self.limits)
            .map_err(Error::InvalidArgument)?;
        if new.entry.request_id.is_empty() {
            new.entry.request_id = Uuid::now_v7().hyphenated().to_string();
        }
        let receipt = self
            .store
            .append(vec![new])
            .await?
            .pop()
            .ok_or_else(|| Error::Internal("append returned no receipt".into()))?;
        Ok(Response::new(RecordResponse {
            id: receipt.id,
            sequence: receipt.sequence,
            entry_hash: receipt.entry_hash.to_vec(),
        }))
    }

    async fn record_batch(
        &self,
        request: Request<RecordBatchRequest>,
    ) -> Result<Response<RecordBatchResponse>, Status> {
        let peer = self
            .authorize(&request, RECORD_BATCH, Permission::Record)
            .await?;
        let context = Self::context(&peer);
        let batch = request.into_inner();
        let count = batch.entries.len();
        if count == 0 {
            return Err(Error::InvalidArgument(vec![Violation::new(
                "entries",
                "at least one entry is required",
            )])
            .into());
        }
        if count > self.limits.max_batch_entries {
            return Err(Error::InvalidArgument(vec![Violation::new(
                "entries",
                format!(
                    "{count} entries, more than the limit of {}",
                    self.limits.max_batch_entries
                ),
            )])
            .into());
        }
        if batch.request_id.len() > self.limits.max_field_bytes {
            return Err(Error::InvalidArgument(vec![Violation::new(
                "request_id",
                format!(
                    "longer than the limit of {} bytes",
                    self.limits.max_field_bytes
                ),
            )])
            .into());
        }
        // The batch's id, else the first id an entry carries; generated only if none is given.
        let shared = Some(batch.request_id.as_str())
            .filter(|id| !id.is_empty())
            .or_else(|| {
                batch
                    .entries
                    .iter()
                    .map(|e| e.request_id.as_str())
                    .find(|id| !id.is_empty())
            })
            .map(str::to_string);
        // Every entry of the batch is stored with this one id (the validator refuses others).
        let request_id = shared
            .clone()
            .unwrap_or_else(|| Uuid::now_v7().hyphenated().to_string());

        let mut violations = Vec::new();
        let mut entries = Vec::with_capacity(count);
        let mut first_index_of_id = HashMap::new();
        for (index, entry) in batch.entries.into_iter().enumerate() {
            let path = format!("entries[{index}]");
            match validate::entry(entry, &path, shared.as_deref(), &context, &self.limits) {
                Ok(mut new) => {
                    if let Some(first) = first_index_of_id.insert(new.entry.id.clone(), index) {
                        violations.push(Violation::new(
                            format!("{path}.id"),
                            format!("duplicates the id of entries[{first}]"),
                        ));
                    }
                    if new.entry.request_id.is_empty() {
                        new.entry.request_id.clone_from(&request_id);
                    }
                    entries.push(new);
                }
                Err(mut bad) => violations.append(&mut bad),
            }
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations).into());
        }
        let receipts = self.store.append(entries).await?;
        // Entries stored now carry the batch's id; a retried entry's receipt carries the id it was
        // first stored with. The batch's id finds the new ones; only a batch of nothing but
        // retries answers with the id they were stored under.
        let request_id = if receipts.iter().any(|r| r.request_id == request_id) {
            request_id
        } else {
            receipts
                .first()
                .map(|r| r.request_id.clone())
                .unwrap_or(request_id)
        };
        Ok(Response::new(RecordBatchResponse {
            request_id,
            ids: receipts.iter().map(|r| r.id.clone()).collect(),
            sequences: receipts.iter().map(|r| r.sequence).collect(),
            entry_hashes: receipts.iter().map(|r| r.entry_hash.to_vec()).collect(),
        }))
    }

    type SubscribeStream = SubscriptionStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.authorize(&request, SUBSCRIBE, Permission::Read)
            .await?;
        let request = request.into_inner();
        let filter = request.filter.unwrap_or_default();
        validate::filter(&filter, "filter", &self.limits).map_err(Error::InvalidArgument)?;
        // Read the head before anything else: every entry committed later is above it.
        let head = *self.store.head().borrow();
        let after = match request.start.and_then(|start| start.position) {
            None => head,
            Some(Position::AfterSequence(after)) => after,
            Some(Position::ReceivedTime(time)) => {
                let nanos = timestamp_nanos(&time).ok_or_else(|| {
                    Error::InvalidArgument(vec![Violation::new(
                        "start.received_time",
                        "not a valid timestamp between 1678 and 2261",
                    )])
                })?;
                match self.store.first_received_since(nanos).await? {
                    Some(first) => first - 1,
                    None => head,
                }
            }
        };
        // A subscription is gapless: one that would begin inside what retention removed is
        // refused (OUT_OF_RANGE, naming the oldest entry kept) rather than silently shortened.
        let pruned_through = self.store.pruned_through();
        if after < pruned_through {
            return Err(Error::Pruned {
                through: pruned_through,
            }
            .into());
        }
        Ok(Response::new(self.hub.subscribe(filter, after)?))
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        self.authorize(&request, QUERY, Permission::Read).await?;
        let response = query(&self.store, &self.limits, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<GetCheckpointResponse>, Status> {
        self.authorize(&request, GET_CHECKPOINT, Permission::Read)
            .await?;
        let response = evidence::get_checkpoint(&self.store, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn list_checkpoints(
        &self,
        request: Request<ListCheckpointsRequest>,
    ) -> Result<Response<ListCheckpointsResponse>, Status> {
        self.authorize(&request, LIST_CHECKPOINTS, Permission::Read)
            .await?;
        let response =
            evidence::list_checkpoints(&self.store, request.into_inner(), &self.limits).await?;
        Ok(Response::new(response))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<GetInclusionProofResponse>, Status> {
        self.authorize(&request, GET_INCLUSION_PROOF, Permission::Read)
            .await?;
        let response = evidence::inclusion_proof(&self.store, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<GetConsistencyProofResponse>, Status> {
        self.authorize(&request, GET_CONSISTENCY_PROOF, Permission::Read)
            .await?;
        let response = evidence::consistency_proof(&self.store, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn list_forwarders(
        &self,
        request: Request<ListForwardersRequest>,
    ) -> Result<Response<ListForwardersResponse>, Status> {
        self.authorize(&request, LIST_FORWARDERS, Permission::Read)
            .await?;
        let response = self.forwarders.report(&self.store).await?;
        Ok(Response::new(response))
    }

    async fn hash_value(
        &self,
        request: Request<HashValueRequest>,
    ) -> Result<Response<HashValueResponse>, Status> {
        let peer = self
            .authorize(&request, HASH_VALUE, Permission::Admin)
            .await?;
        let response = redaction::hash_value(request.get_ref(), &self.limits)?;
        // Audited before it is answered, like any admin act: no record, no hash.
        let entry = redaction::hashed_entry(&peer, HASH_VALUE, &response.key_id);
        let mut new = validate::own_entry(entry, &Self::context(&peer), &self.limits);
        new.entry.request_id = Uuid::now_v7().hyphenated().to_string();
        self.store.append(vec![new]).await?;
        Ok(Response::new(response))
    }
}

/// One page of a query: the validation, page tokens and limits of `Query`, shared by the gRPC
/// handler and the web console.
pub async fn query<S: Store>(
    store: &S,
    limits: &Limits,
    request: QueryRequest,
) -> Result<QueryResponse, Error> {
    let filter = request.filter.unwrap_or_default();
    validate::filter(&filter, "filter", limits).map_err(Error::InvalidArgument)?;
    let order = match Order::try_from(request.order) {
        Ok(Order::Descending) => Order::Descending,
        Ok(Order::Ascending | Order::Unspecified) => Order::Ascending,
        Err(_) => {
            return Err(Error::InvalidArgument(vec![Violation::new(
                "order",
                format!("unknown order {}", request.order),
            )]));
        }
    };
    let position = if request.page_token.is_empty() {
        None
    } else {
        Some(
            page_token::decode(&request.page_token, &filter, order).ok_or_else(|| {
                Error::InvalidArgument(vec![Violation::new(
                    "page_token",
                    "not a token returned by a query with this filter and order",
                )])
            })?,
        )
    };
    let limit = match request.page_size {
        0 => limits.default_page_size,
        size => size.min(limits.max_page_size),
    } as usize;
    let direction = match order {
        Order::Descending => Direction::Descending { before: position },
        _ => Direction::Ascending {
            after: position.unwrap_or(0),
        },
    };
    let mut read = Read {
        filter,
        direction,
        through: *store.head().borrow(),
        limit,
        max_bytes: limits.max_response_bytes,
    };
    // A query is not a gapless stream: it starts after what retention removed, and says so.
    let mut pruned_through = store.pruned_through();
    let page = loop {
        if let Direction::Ascending { after } = &mut read.direction {
            *after = (*after).max(pruned_through);
        }
        match store.read(read.clone()).await {
            Err(Error::Pruned { through }) if through > pruned_through => pruned_through = through,
            page => break page?,
        }
    };
    let next_page_token = match page.entries.last() {
        Some(last) if !page.exhausted => page_token::encode(last.sequence, &read.filter, order),
        _ => String::new(),
    };
    Ok(QueryResponse {
        entries: page.entries,
        next_page_token,
        pruned_through,
    })
}

/// The service driven in-process over the memory backend: no files, no processes, no sockets.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use audit_proto::pb::audit_service_server::AuditService as _;
    use audit_proto::pb::{self, Filter};
    use tokio_stream::StreamExt;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::access::DenialLimits;
    use crate::store::memory::MemoryDatabase;
    use crate::store::{Checkpointing, Log, StartupCheck, engine};

    fn service(db: &MemoryDatabase) -> (AuditService<Log>, Log) {
        let options = engine::Options {
            max_pending_bytes: 1 << 20,
            max_group_entries: 64,
            read_connections: 1,
            checkpointing: Checkpointing {
                signing_key: None,
                log_name: "test".into(),
                every_entries: 100,
                interval: Duration::from_secs(600),
                copy_dir: None,
                startup_check: StartupCheck::Full,
            },
        };
        let key = audit_ledger::SigningKey::generate("test").unwrap();
        let log = Log::open(db.backend(true), key, true, false, &options).expect("open");
        let limits = Arc::new(Limits::default());
        let hub = Hub::new(
            log.clone(),
            8,
            Duration::from_secs(60),
            1 << 20,
            CancellationToken::new(),
        );
        let access = Arc::new(Access::new(
            None,
            DenialLimits {
                per_second: 10,
                per_identity_per_second: 10,
            },
        ));
        (AuditService::new(log.clone(), hub, limits, access), log)
    }

    /// A request as the serve loop hands it over from a plaintext loopback connection.
    fn request<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some("127.0.0.1:40000".parse().unwrap()),
            });
        request
    }

    fn entry(resource: &str) -> pb::AuditEntry {
        pb::AuditEntry {
            source: "billing".into(),
            method: "/billing.v1.Billing/Charge".into(),
            outcome: pb::Outcome::Success as i32,
            resource: resource.into(),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_queries_and_streams_and_maps_store_errors_to_grpc() {
        let db = MemoryDatabase::new();
        let (service, log) = service(&db);
        let mut stream = service
            .subscribe(request(pb::SubscribeRequest::default()))
            .await
            .expect("subscribe")
            .into_inner();
        let one = service
            .record(request(pb::RecordRequest {
                entry: Some(entry("a")),
            }))
            .await
            .expect("record")
            .into_inner();
        assert_eq!(one.sequence, 1);
        let batch = service
            .record_batch(request(pb::RecordBatchRequest {
                request_id: "r-1".into(),
                entries: vec![entry("b"), entry("c")],
            }))
            .await
            .expect("batch")
            .into_inner();
        assert_eq!(batch.sequences, [2, 3]);
        let page = service
            .query(request(pb::QueryRequest {
                filter: Some(Filter {
                    request_id: "r-1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .expect("query")
            .into_inner();
        let resources: Vec<_> = page.entries.iter().map(|e| e.resource.as_str()).collect();
        assert_eq!(resources, ["b", "c"]);
        let mut streamed = Vec::new();
        while streamed.len() < 3 {
            let message = stream.next().await.expect("open").expect("message");
            if let Some(pb::subscribe_response::Message::Entry(entry)) = message.message {
                streamed.push(entry.sequence);
            }
        }
        assert_eq!(streamed, [1, 2, 3]);

        // The same id with other content; then the database down, then back.
        let mut retried = entry("d");
        retried.id = batch.ids[0].clone();
        let conflict = service
            .record(request(pb::RecordRequest {
                entry: Some(retried),
            }))
            .await
            .unwrap_err();
        assert_eq!(conflict.code(), tonic::Code::AlreadyExists);
        db.set_up(false);
        let down = service
            .record(request(pb::RecordRequest {
                entry: Some(entry("e")),
            }))
            .await
            .unwrap_err();
        assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
        db.set_up(true);
        let mut writable = log.writable();
        tokio::time::timeout(Duration::from_secs(10), writable.wait_for(|w| *w))
            .await
            .expect("recovers")
            .expect("writable");
        let after = service
            .record(request(pb::RecordRequest {
                entry: Some(entry("f")),
            }))
            .await
            .expect("record after recovery")
            .into_inner();
        assert_eq!(after.sequence, 4, "nothing of the refused write was stored");
        log.close().await;
    }
}
