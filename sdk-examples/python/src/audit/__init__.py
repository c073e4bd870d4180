"""Client for the audit service: generated protobuf messages and gRPC stubs.

The API lives in `audit.v1` (`entry_pb2`, `service_pb2`, `service_pb2_grpc`), generated from
`proto/audit/v1/*.proto` with `buf generate`; do not edit those modules by hand.
"""
