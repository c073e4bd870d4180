//! Proto3 JSON for audit messages, in both directions: [`audit_format::proto_json`], shared
//! with the server's forwarders, re-exported here where it used to live.

pub use audit_format::proto_json::*;
