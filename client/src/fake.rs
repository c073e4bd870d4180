//! A scripted in-process audit server for the client's unit tests: subscriptions follow a
//! script of episodes (messages, then an error or a clean end) and queries page through a fixed
//! log, while the fake records what the client asked for.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use audit_proto::pb;
use futures::{Stream, StreamExt as _, stream};
use pb::audit_service_server::{AuditService, AuditServiceServer};
use tonic::{Request, Response, Status};

use crate::Client;

/// One subscription connection: these messages, then `end` (`None`: a clean end; no episode
/// left: the stream stays open).
pub struct Episode {
    pub messages: Vec<pb::SubscribeResponse>,
    pub end: Option<Status>,
}

#[derive(Default)]
pub struct Fake {
    /// Entries with sequences 1, 2, … for queries.
    pub log: Vec<pb::AuditEntry>,
    pub episodes: Mutex<VecDeque<Episode>>,
    /// The start position of each Subscribe call.
    pub starts: Mutex<Vec<Option<pb::StartPosition>>>,
    /// Each Query call.
    pub queries: Mutex<Vec<pb::QueryRequest>>,
}

pub fn entry(sequence: u64) -> pb::SubscribeResponse {
    let mut entry = crate::EntryBuilder::new("fake", "/p.S/M").build();
    entry.sequence = sequence;
    pb::SubscribeResponse {
        message: Some(pb::subscribe_response::Message::Entry(entry)),
    }
}

pub fn heartbeat(sequence: u64) -> pb::SubscribeResponse {
    pb::SubscribeResponse {
        message: Some(pb::subscribe_response::Message::Heartbeat(pb::Heartbeat {
            sequence,
            time: None,
        })),
    }
}

/// Serves `fake` on a free local port and returns a client connected to it.
pub async fn serve(fake: Arc<Fake>) -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuditServiceServer::from_arc(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Client::connect(format!("http://{address}")).await.unwrap()
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for Fake {
    async fn record(
        &self,
        _: Request<pb::RecordRequest>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn record_batch(
        &self,
        _: Request<pb::RecordBatchRequest>,
    ) -> Result<Response<pb::RecordBatchResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<SubscribeStream>, Status> {
        self.starts.lock().unwrap().push(request.into_inner().start);
        let episode = self.episodes.lock().unwrap().pop_front();
        let stream: SubscribeStream = match episode {
            None => Box::pin(stream::pending()),
            Some(Episode { messages, end }) => {
                let messages = stream::iter(messages.into_iter().map(Ok));
                Box::pin(messages.chain(stream::iter(end.map(Err))))
            }
        };
        Ok(Response::new(stream))
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let request = request.into_inner();
        self.queries.lock().unwrap().push(request.clone());
        let offset: usize = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse()
                .map_err(|_| Status::invalid_argument("token"))?
        };
        let size = if request.page_size == 0 {
            10
        } else {
            request.page_size as usize
        };
        let end = (offset + size).min(self.log.len());
        let next_page_token = if end < self.log.len() {
            end.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(pb::QueryResponse {
            entries: self.log[offset..end].to_vec(),
            next_page_token,
        }))
    }
}
