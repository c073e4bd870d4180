//! The `audit.v1` protocol: messages, the `AuditService` client and server, and the file
//! descriptor set used for gRPC reflection and JSON.

#![forbid(unsafe_code)]

mod generated {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("audit.v1");
}

/// Generated messages and services of package `audit.v1`.
pub mod pb {
    pub use crate::generated::*;
}

/// Encoded `google.protobuf.FileDescriptorSet` of `audit.v1` and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/audit_v1_descriptor.bin"));

/// Full name of the audit service, as used by gRPC health checks and reflection.
pub const SERVICE_NAME: &str = "audit.v1.AuditService";
