//! gRPC health checking and server reflection (v1 and v1alpha), as grpcurl and load balancers
//! use them.

use audit_client::ServingStatus;
use audit_tests::TestServer;
use tokio_stream::StreamExt;

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_audit_service() {
    let server = TestServer::start().await;
    let client = server.client().await;
    assert_eq!(client.health("").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        client.health("audit.v1.AuditService").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        client.health("no.such.Service").await.unwrap(),
        ServingStatus::ServiceUnknown
    );
}

macro_rules! list_services {
    ($version:ident, $uri:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let channel = tonic::transport::Endpoint::from_shared($uri)
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut client = ServerReflectionClient::new(channel);
        let requests = tokio_stream::iter([
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "audit.v1.AuditEntry".into(),
                )),
            },
        ]);
        let mut responses = client
            .server_reflection_info(requests)
            .await
            .expect("reflection")
            .into_inner();
        let mut services = Vec::new();
        let mut files = 0;
        while let Some(response) = responses.next().await {
            match response
                .expect("response")
                .message_response
                .expect("message")
            {
                MessageResponse::ListServicesResponse(list) => {
                    services.extend(list.service.into_iter().map(|s| s.name));
                }
                MessageResponse::FileDescriptorResponse(file) => {
                    files += file.file_descriptor_proto.len();
                }
                other => panic!("unexpected reflection response {other:?}"),
            }
        }
        services.sort();
        (services, files)
    }};
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_describe_the_audit_service() {
    let server = TestServer::start().await;
    for (version, (services, files)) in [
        ("v1", list_services!(v1, server.uri())),
        ("v1alpha", list_services!(v1alpha, server.uri())),
    ] {
        // Each reflection version lists itself next to the served services.
        assert_eq!(
            services,
            [
                "audit.v1.AuditService".to_string(),
                "grpc.health.v1.Health".to_string(),
                format!("grpc.reflection.{version}.ServerReflection"),
            ]
        );
        assert!(
            files >= 1,
            "the file defining audit.v1.AuditEntry is served"
        );
    }
}
