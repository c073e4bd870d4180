"""A small in-memory key store, audited by the SDK's interceptor: the example host service.

`keystore.v1.KeyStore` has CreateKey, DeleteKey, BatchDeleteKeys (one audit entry per key,
sharing the call's request_id) and a streaming ListKeys. It needs no generated code: the
messages are `google.protobuf.Struct`s (`{"name": "k1"}`) and the service is a generic handler,
served by a `grpc.server` with `AuditInterceptor` or a `grpc.aio.server` with
`AsyncAuditInterceptor`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf import any_pb2, json_format, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from audit import AuditHandle

SERVICE = "keystore.v1.KeyStore"
CREATE = f"/{SERVICE}/CreateKey"
DELETE = f"/{SERVICE}/DeleteKey"
BATCH_DELETE = f"/{SERVICE}/BatchDeleteKeys"
LIST = f"/{SERVICE}/ListKeys"

_NAME = re.compile(r"^[a-z0-9._-]{1,64}$")


@dataclass
class KeyStoreError(Exception):
    """A refusal, with the gRPC status it becomes; `field` names the refused request field."""

    code: grpc.StatusCode
    message: str
    field: str = ""

    def status(self) -> grpc.Status:
        """The status with `google.rpc.BadRequest` details when a field is named."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.field:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=self.field, description=self.message
                        )
                    ]
                )
            )
            status.details.append(detail)
        assert status.code != code_pb2.OK
        result: grpc.Status = rpc_status.to_status(status)
        return result


class KeyStore:
    """The keys, by name, with who created them. Handlers describe what they did through the
    call's `AuditHandle` (event, category, resource; one entry per key of a batch)."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()

    def create(self, name: str, principal: str) -> dict[str, Any]:
        audit = AuditHandle.current()
        if audit is not None:
            audit.annotate(event="KEY_CREATED", category="KEY_MANAGEMENT", resource=f"keys/{name}")
        if not _NAME.match(name):
            raise KeyStoreError(
                grpc.StatusCode.INVALID_ARGUMENT, "must be 1 to 64 of a-z, 0-9, '.', '_', '-'", "name"
            )
        with self._lock:
            if name in self._keys:
                raise KeyStoreError(grpc.StatusCode.ALREADY_EXISTS, f"key {name} already exists")
            self._keys[name] = principal
        return {"name": name, "created_by": principal}

    def delete(self, name: str) -> dict[str, Any]:
        audit = AuditHandle.current()
        if audit is not None:
            audit.annotate(event="KEY_DELETED", category="KEY_MANAGEMENT", resource=f"keys/{name}")
        with self._lock:
            if self._keys.pop(name, None) is None:
                raise KeyStoreError(grpc.StatusCode.NOT_FOUND, f"key {name} does not exist")
        return {}

    def batch_delete(self, names: list[str]) -> dict[str, Any]:
        """Deletes what exists; one audit entry per key, sharing the call's request_id."""
        audit = AuditHandle.current()
        if audit is not None:
            audit.annotate(event="KEYS_DELETED", category="KEY_MANAGEMENT")
        deleted: list[str] = []
        missing: list[str] = []
        for name in names:
            with self._lock:
                found = self._keys.pop(name, None) is not None
            (deleted if found else missing).append(name)
            if audit is not None:
                audit.record_operation(
                    event="KEY_DELETED",
                    category="KEY_MANAGEMENT",
                    resource=f"keys/{name}",
                    status=grpc.StatusCode.OK if found else grpc.StatusCode.NOT_FOUND,
                    status_message="" if found else f"key {name} does not exist",
                )
        return {"deleted": deleted, "missing": missing}

    def list(self, prefix: str, limit: int) -> Iterator[dict[str, Any]]:
        """The keys starting with `prefix`, by name; RESOURCE_EXHAUSTED after `limit` keys
        (0: 100) when more match."""
        audit = AuditHandle.current()
        if audit is not None:
            audit.annotate(event="KEYS_LISTED", category="KEY_MANAGEMENT", resource=f"keys/{prefix}*")
        with self._lock:
            names = sorted(name for name in self._keys if name.startswith(prefix))
            owners = dict(self._keys)
        for sent, name in enumerate(names):
            if sent == (limit or 100):
                raise KeyStoreError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {sent} keys match")
            yield {"name": name, "created_by": owners[name]}


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def _args(request: struct_pb2.Struct) -> dict[str, Any]:
    """The request's fields as plain values."""
    values: dict[str, Any] = json_format.MessageToDict(request)
    return values


def _principal(context: Any) -> str:
    return str(dict(context.invocation_metadata() or ()).get("x-user", ""))


def _handlers(methods: dict[str, Callable[..., Any]], streaming: set[str]) -> grpc.GenericRpcHandler:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for name, function in methods.items():
        make = grpc.unary_stream_rpc_method_handler if name in streaming else grpc.unary_unary_rpc_method_handler
        handlers[name] = make(
            function,
            request_deserializer=struct_pb2.Struct.FromString,
            response_serializer=struct_pb2.Struct.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def sync_handler(store: KeyStore) -> grpc.GenericRpcHandler:
    """The service for a `grpc.server`."""

    def unary(operation: Callable[[struct_pb2.Struct, Any], dict[str, Any]]) -> Callable[..., Any]:
        def handle(request: struct_pb2.Struct, context: grpc.ServicerContext) -> struct_pb2.Struct:
            try:
                return _struct(operation(request, context))
            except KeyStoreError as error:
                context.abort_with_status(error.status())

        return handle

    def list_keys(request: struct_pb2.Struct, context: grpc.ServicerContext) -> Iterator[struct_pb2.Struct]:
        try:
            for key in store.list(str(_args(request).get("prefix", "")), int(_args(request).get("limit", 0))):
                yield _struct(key)
        except KeyStoreError as error:
            context.abort_with_status(error.status())

    return _handlers(
        {
            "CreateKey": unary(lambda r, c: store.create(str(_args(r).get("name", "")), _principal(c))),
            "DeleteKey": unary(lambda r, c: store.delete(str(_args(r).get("name", "")))),
            "BatchDeleteKeys": unary(lambda r, c: store.batch_delete([str(n) for n in _args(r).get("names", [])])),
            "ListKeys": list_keys,
        },
        {"ListKeys"},
    )


def async_handler(store: KeyStore) -> grpc.GenericRpcHandler:
    """The same service for a `grpc.aio.server`, with `async def` handlers."""

    def unary(operation: Callable[[struct_pb2.Struct, Any], dict[str, Any]]) -> Callable[..., Any]:
        async def handle(request: struct_pb2.Struct, context: grpc.aio.ServicerContext[Any, Any]) -> struct_pb2.Struct:
            try:
                return _struct(operation(request, context))
            except KeyStoreError as error:
                await context.abort_with_status(error.status())

        return handle

    async def list_keys(
        request: struct_pb2.Struct, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[struct_pb2.Struct]:
        try:
            for key in store.list(str(_args(request).get("prefix", "")), int(_args(request).get("limit", 0))):
                yield _struct(key)
        except KeyStoreError as error:
            await context.abort_with_status(error.status())

    return _handlers(
        {
            "CreateKey": unary(lambda r, c: store.create(str(_args(r).get("name", "")), _principal(c))),
            "DeleteKey": unary(lambda r, c: store.delete(str(_args(r).get("name", "")))),
            "BatchDeleteKeys": unary(lambda r, c: store.batch_delete([str(n) for n in _args(r).get("names", [])])),
            "ListKeys": list_keys,
        },
        {"ListKeys"},
    )


def serve(interceptor: grpc.ServerInterceptor, store: KeyStore, address: str = "127.0.0.1:0") -> tuple[grpc.Server, int]:
    """A started `grpc.server` on `address` serving `store` behind `interceptor`, and its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[interceptor])
    server.add_generic_rpc_handlers((sync_handler(store),))
    port = server.add_insecure_port(address)
    server.start()
    return server, port


class KeyStoreClient:
    """Calls the key store with `Struct` messages; each call returns the response and the
    `grpc.Call` (for its metadata), or raises `grpc.RpcError`."""

    def __init__(self, channel: grpc.Channel, user: str) -> None:
        self._channel = channel
        self._user = user

    def _metadata(self, request_id: str) -> tuple[tuple[str, str | bytes], ...]:
        metadata: tuple[tuple[str, str | bytes], ...] = (("x-user", self._user),)
        if request_id:
            metadata += (("x-request-id", request_id),)
        return metadata

    def _unary(self, method: str, request: dict[str, Any], request_id: str) -> tuple[struct_pb2.Struct, grpc.Call]:
        call = self._channel.unary_unary(
            method,
            request_serializer=struct_pb2.Struct.SerializeToString,
            response_deserializer=struct_pb2.Struct.FromString,
        )
        response, rendezvous = call.with_call(_struct(request), timeout=5, metadata=self._metadata(request_id))
        return response, rendezvous

    def create(self, name: str, request_id: str = "") -> tuple[struct_pb2.Struct, grpc.Call]:
        return self._unary(CREATE, {"name": name}, request_id)

    def delete(self, name: str, request_id: str = "") -> tuple[struct_pb2.Struct, grpc.Call]:
        return self._unary(DELETE, {"name": name}, request_id)

    def batch_delete(self, names: list[str], request_id: str = "") -> tuple[struct_pb2.Struct, grpc.Call]:
        return self._unary(BATCH_DELETE, {"names": names}, request_id)

    def list(self, prefix: str, limit: int = 0) -> Iterator[struct_pb2.Struct]:
        call = self._channel.unary_stream(
            LIST,
            request_serializer=struct_pb2.Struct.SerializeToString,
            response_deserializer=struct_pb2.Struct.FromString,
        )
        responses: Iterator[struct_pb2.Struct] = call(
            _struct({"prefix": prefix, "limit": limit}), timeout=5, metadata=self._metadata("")
        )
        return responses
