//! An example host service audited by [`AuditLayer`]: a small in-memory key store (in the
//! spirit of MinIO KES or a key manager) with create, delete, batch-delete and a streaming list.
//!
//! The layer records one entry per call; the handlers name the event and resource of their call
//! through the [`AuditHandle`], and `BatchDeleteKeys` adds one entry per key, all sharing the
//! call's `request_id`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use audit_client::pb::Outcome;
use audit_client::{AuditHandle, AuditLayer, Recorder};
use futures::Stream;
use tonic::transport::server::Router;
use tonic::{Request, Response, Status};
use tower::layer::util::{Identity, Stack};

/// The generated `keystore.v1` code.
pub mod pb {
    #![allow(missing_docs)]
    tonic::include_proto!("keystore.v1");

    /// The file descriptor set of `keystore.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/keystore_v1_descriptor.bin"));
}

use pb::key_store_server::{KeyStore as KeyStoreApi, KeyStoreServer};

/// The metadata header naming the caller's principal. A real service would take the principal
/// from verified credentials (an authentication layer in front of the audit layer); the example
/// trusts the header.
pub const PRINCIPAL_HEADER: &str = "x-user";

/// The event category of every entry of this service.
const CATEGORY: &str = "KEY_MANAGEMENT";

/// The audit layer as the example configures it: principal from [`PRINCIPAL_HEADER`], health
/// checks and reflection not audited. Fail-open; add `.fail_closed(deadline)` for fail-closed.
pub fn audit_layer(recorder: Recorder) -> AuditLayer {
    AuditLayer::new(recorder)
        .principal_from_header(PRINCIPAL_HEADER)
        .exclude("/grpc.health.v1.Health/*")
        .exclude("/grpc.reflection.*")
}

/// The server: the key store, health and reflection, every call going through `layer`.
/// Serve it with `serve_with_incoming_shutdown` or `serve_with_shutdown`.
pub async fn server(layer: AuditLayer) -> Router<Stack<AuditLayer, Identity>> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<KeyStoreServer<KeyStore>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the generated descriptor set is valid");
    tonic::transport::Server::builder()
        .layer(layer)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(KeyStoreServer::new(KeyStore::default()))
}

/// The key store: key names and who created them, in memory.
#[derive(Debug, Default, Clone)]
pub struct KeyStore {
    keys: Arc<Mutex<BTreeMap<String, pb::Key>>>,
}

impl KeyStore {
    fn keys(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, pb::Key>> {
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Describes the call's own entry: what happened, to what.
fn annotate<T>(request: &Request<T>, event: &str, resource: Option<&str>) {
    if let Some(audit) = AuditHandle::of(request) {
        audit.annotate(|entry| {
            let entry = entry.event(event).category(CATEGORY);
            match resource {
                Some(resource) => entry.resource(resource),
                None => entry,
            }
        });
    }
}

fn check_name(name: &str) -> Result<(), Status> {
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
        return Err(Status::invalid_argument(
            "name: 1 to 64 of a-z, 0-9, `-`, `_`, `.`",
        ));
    }
    Ok(())
}

fn principal<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get(PRINCIPAL_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

type KeyStream = Pin<Box<dyn Stream<Item = Result<pb::ListKeysResponse, Status>> + Send>>;

#[tonic::async_trait]
impl KeyStoreApi for KeyStore {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let name = &request.get_ref().name;
        annotate(&request, "KEY_CREATED", Some(&format!("keys/{name}")));
        check_name(name)?;
        let key = pb::Key {
            name: name.clone(),
            created_by: principal(&request),
        };
        let mut keys = self.keys();
        if keys.contains_key(name) {
            return Err(Status::already_exists(format!("key {name} exists")));
        }
        keys.insert(name.clone(), key.clone());
        Ok(Response::new(pb::CreateKeyResponse { key: Some(key) }))
    }

    async fn delete_key(
        &self,
        request: Request<pb::DeleteKeyRequest>,
    ) -> Result<Response<pb::DeleteKeyResponse>, Status> {
        let name = &request.get_ref().name;
        annotate(&request, "KEY_DELETED", Some(&format!("keys/{name}")));
        match self.keys().remove(name) {
            Some(_) => Ok(Response::new(pb::DeleteKeyResponse {})),
            None => Err(Status::not_found(format!("key {name} does not exist"))),
        }
    }

    async fn batch_delete_keys(
        &self,
        request: Request<pb::BatchDeleteKeysRequest>,
    ) -> Result<Response<pb::BatchDeleteKeysResponse>, Status> {
        annotate(&request, "KEYS_BATCH_DELETED", None);
        let audit = AuditHandle::of(&request);
        let mut response = pb::BatchDeleteKeysResponse::default();
        let mut keys = self.keys();
        for name in &request.get_ref().names {
            let deleted = keys.remove(name).is_some();
            // One entry per operation, sharing the call's request_id (SPIRE's model).
            if let Some(audit) = audit {
                let entry = audit
                    .operation()
                    .event("KEY_DELETED")
                    .category(CATEGORY)
                    .resource(format!("keys/{name}"));
                audit.record(if deleted {
                    entry.outcome(Outcome::Success)
                } else {
                    entry.status_of(&Status::not_found(format!("key {name} does not exist")))
                });
            }
            if deleted {
                response.deleted.push(name.clone());
            } else {
                response.missing.push(name.clone());
            }
        }
        Ok(Response::new(response))
    }

    type ListKeysStream = KeyStream;

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<KeyStream>, Status> {
        let pb::ListKeysRequest { prefix, limit } = request.get_ref().clone();
        annotate(&request, "KEYS_LISTED", Some(&format!("keys/{prefix}*")));
        let limit = if limit == 0 { 100 } else { limit as usize };
        let matching: Vec<pb::Key> = self
            .keys()
            .range(prefix.clone()..)
            .take_while(|(name, _)| name.starts_with(&prefix))
            .map(|(_, key)| key.clone())
            .take(limit + 1)
            .collect();
        let too_many = matching.len() > limit;
        let keys = matching
            .into_iter()
            .take(limit)
            .map(|key| Ok(pb::ListKeysResponse { key: Some(key) }));
        // More keys than asked for: the stream ends with an error after `limit` keys, so the
        // status arrives in the trailers.
        let end = too_many.then(|| {
            Err(Status::resource_exhausted(format!(
                "more than {limit} keys match; narrow the prefix"
            )))
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(keys.chain(end)))))
    }
}
