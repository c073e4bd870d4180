"""audit.v1: AuditService and AuditEntry, generated from proto/audit/v1 with buf.

    from audit.v1 import entry_pb2, service_pb2, service_pb2_grpc
"""
