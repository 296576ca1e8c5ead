"""The gRPC transport: KServe's V2 `GRPCInferenceService`, served by our own grpc.aio server.

`ModelInfer` is decoded by `transport.v2` and classified by the core (the same limits, shedding,
timeouts and metrics as REST); metadata and health RPCs are KServe's, after the model name and
version are checked; the model-repository RPCs (load, unload) answer UNIMPLEMENTED, so no client
can unload the model through the public port. Errors carry the status of their row in
`errors.ERROR_TABLE`, the message as details and the code in the trailing metadata. Requests over
`max_body_bytes` are refused like REST's (counted, with the code); gRPC's own hard cap sits at
four times that, and a message past it gets gRPC's own RESOURCE_EXHAUSTED before any handler runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc
from grpc import aio
from kserve.errors import ModelNotFound as KServeModelNotFound
from kserve.errors import ModelNotReady as KServeModelNotReady
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.servicer import InferenceServicer

from transformer import metrics
from transformer.api_keys import require_key
from transformer.core.service import ServingCore
from transformer.errors import (ERROR_CODE_METADATA, ModelNotFound, NotServed, PredictorUnavailable, RequestTooLarge,
                                ServiceError)
from transformer.transport import v2
from transformer.transport.recording import check_model, track

log = logging.getLogger(__name__)


async def abort(context, error: ServiceError) -> None:
    context.set_trailing_metadata(((ERROR_CODE_METADATA, error.code),))
    await context.abort(error.kind.grpc_status, error.message)


# With API_KEYS set, the health RPCs answer without a key (probes carry none); every other RPC needs one.
OPEN_RPCS = frozenset({"ServerLive", "ServerReady", "ModelReady"})
KEY_METADATA = "the metadata 'authorization: Bearer <key>'"


def _authorization(context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def counted(route: str):
    """Run an RPC inside the core's request record, turning our and KServe's errors into statuses."""
    def decorate(method):
        @functools.wraps(method)
        async def rpc(self: "GuardedServicer", request, context):
            with track("grpc", route, context) as record:
                try:
                    if self.core.api_keys is not None and route not in OPEN_RPCS:
                        require_key(self.core.api_keys, _authorization(context), KEY_METADATA)
                    response = await method(self, request, context)
                except ServiceError as error:
                    record.fail(error)
                    await abort(context, error)
                except (KServeModelNotFound, KServeModelNotReady) as error:
                    mapped = (ModelNotFound if isinstance(error, KServeModelNotFound) else PredictorUnavailable)(
                        str(getattr(error, "reason", error)))
                    record.fail(mapped)
                    await abort(context, mapped)
                except (aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception:
                    log.exception("unhandled error in gRPC %s", route)
                    record.fail_unhandled()
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error; it was logged")
                else:
                    record.status = 200
                    return response
        return rpc
    return decorate


class GuardedServicer(InferenceServicer):
    def __init__(self, dataplane, repository_extension, core: ServingCore, model_name: str):
        super().__init__(dataplane, repository_extension)
        self.core = core
        self.model_name = model_name

    def _check_model(self, name: str, version: str) -> None:
        check_model(name, version, self.model_name, self.core.version)  # gRPC: an empty name is a wrong one

    @counted("ModelInfer")
    async def ModelInfer(self, request, context):
        size = request.ByteSize()
        limit = self.core.settings.max_body_bytes
        if size > limit:
            raise RequestTooLarge(f"the request has {size} bytes; the limit is {limit}", limit=limit)
        self._check_model(request.model_name, request.model_version)
        metrics.REQUEST_BYTES.labels(protocol="grpc", route="ModelInfer").observe(size)
        call = v2.decode_grpc(request, self.core.default_options)
        result = await self.core.classify(call.request)
        tensors = v2.output_tensors(call, result.predictions, result.labels, result.details())
        return v2.encode_grpc(call, tensors, self.model_name, result.version)

    @counted("ModelMetadata")
    async def ModelMetadata(self, request, context):
        self._check_model(request.name, request.version)
        response = await super().ModelMetadata(request, context)
        response.versions[:] = [self.core.version]
        return response

    @counted("ModelReady")
    async def ModelReady(self, request, context):
        self._check_model(request.name, request.version)
        return await super().ModelReady(request, context)

    @counted("ServerLive")
    async def ServerLive(self, request, context):
        return await super().ServerLive(request, context)

    @counted("ServerReady")
    async def ServerReady(self, request, context):
        return await super().ServerReady(request, context)

    @counted("ServerMetadata")
    async def ServerMetadata(self, request, context):
        return await super().ServerMetadata(request, context)

    @counted("RepositoryModelLoad")
    async def RepositoryModelLoad(self, request, context):
        raise NotServed("the model repository RPCs are not served here")

    @counted("RepositoryModelUnload")
    async def RepositoryModelUnload(self, request, context):
        raise NotServed("the model repository RPCs are not served here")


def grpc_address(host: str, port: int) -> str:
    """gRPC's listening address: every interface ([::], dual-stack, as KServe) for 0.0.0.0 or ::,
    else the address itself (IPv6 in brackets)."""
    if host in ("0.0.0.0", "::"):
        return f"[::]:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcTransport:
    """A grpc.aio server on `host`:port with the guarded servicer; start() runs until stop()."""

    def __init__(self, port: int, servicer: GuardedServicer, max_body_bytes: int, grace_s: float = 30,
                 host: str = "0.0.0.0"):
        self.host = host
        self.port = port
        self.servicer = servicer
        self.max_body_bytes = max_body_bytes
        self.grace_s = grace_s
        self._server: aio.Server | None = None

    async def start(self) -> None:
        self._server = aio.server(options=[
            ("grpc.max_receive_message_length", 4 * self.max_body_bytes),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
        ])
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self._server)
        address = grpc_address(self.host, self.port)
        self._server.add_insecure_port(address)
        log.info("gRPC (KServe V2) on %s", address)
        await self._server.start()
        await self._server.wait_for_termination()

    async def stop(self, sig: int | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace=self.grace_s)
