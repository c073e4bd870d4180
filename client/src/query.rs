//! Queries as a stream of entries that follows page tokens.

use std::pin::Pin;

use audit_proto::pb;
use futures::Stream;
use pb::audit_service_client::AuditServiceClient;
use tonic::transport::Channel;

use crate::Error;

/// A stream of entries, ending after its first error.
pub type EntryStream = Pin<Box<dyn Stream<Item = Result<pb::AuditEntry, Error>> + Send>>;

/// Order, page size and limit of [`Client::query`](crate::Client::query).
///
/// ```
/// use audit_client::{QueryOptions, pb::Order};
/// let newest_ten = QueryOptions::new().order(Order::Descending).limit(10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueryOptions {
    order: pb::Order,
    page_size: u32,
    limit: Option<u64>,
}

impl QueryOptions {
    /// Oldest first, the server's page size, no limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the order (ascending or descending by sequence).
    pub fn order(mut self, order: pb::Order) -> Self {
        self.order = order;
        self
    }

    /// Sets how many entries to ask for per page (0: the server's default).
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size;
        self
    }

    /// Stops after `limit` entries.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The page size to ask for when `remaining` entries are still wanted: never more than
    /// needed.
    fn page_size_for(&self, remaining: Option<u64>) -> u32 {
        let Some(remaining) = remaining else {
            return self.page_size;
        };
        let remaining = u32::try_from(remaining).unwrap_or(u32::MAX);
        if self.page_size == 0 {
            remaining
        } else {
            self.page_size.min(remaining)
        }
    }
}

pub(crate) fn query_stream(
    client: AuditServiceClient<Channel>,
    filter: pb::Filter,
    options: QueryOptions,
) -> EntryStream {
    Box::pin(async_stream::stream! {
        let mut remaining = options.limit;
        let mut page_token = String::new();
        while remaining != Some(0) {
            let request = pb::QueryRequest {
                filter: Some(filter.clone()),
                page_size: options.page_size_for(remaining),
                page_token: std::mem::take(&mut page_token),
                order: options.order.into(),
            };
            let page = match client.clone().query(request).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    yield Err(status.into());
                    return;
                }
            };
            for entry in page.entries {
                if remaining == Some(0) {
                    return;
                }
                remaining = remaining.map(|r| r - 1);
                yield Ok(entry);
            }
            if page.next_page_token.is_empty() {
                return;
            }
            page_token = page.next_page_token;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_never_exceeds_what_is_left() {
        let options = QueryOptions::new();
        assert_eq!(options.page_size_for(None), 0);
        assert_eq!(options.page_size_for(Some(5)), 5);
        let options = options.page_size(100);
        assert_eq!(options.page_size_for(None), 100);
        assert_eq!(options.page_size_for(Some(5)), 5);
        assert_eq!(options.page_size_for(Some(500)), 100);
        assert_eq!(options.page_size_for(Some(u64::MAX)), 100);
    }
}
