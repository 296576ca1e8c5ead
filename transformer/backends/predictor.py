"""Client of the predictor (Triton) over KServe V2: gRPC (default) or REST, pinned to one version.

Every call names the model version the transformer's bundle belongs to, so an answer can only come
from that version; a predictor that does not serve it answers "not found", which becomes
`PredictorUnavailable` (retry / not ready), never a result. gRPC uses KServe's protobufs on one
channel of our own; REST uses KServe's `InferenceRESTClient`. Readiness is asked for the version; the
version's fingerprint comes from Triton's model configuration parameters (`fingerprint_v<N>`, or
`fingerprint` in a repository exported before versions; gRPC `ModelConfig` or REST
`GET /v2/models/<name>/config`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Mapping, Protocol

import numpy as np

from transformer import metrics, tracing
from transformer.errors import PredictorUnavailable

Tensors = Mapping[str, np.ndarray]  # input name -> int64 [rows, length]
LOGITS = "logits"

log = logging.getLogger(__name__)


class Predictor(Protocol):
    async def infer(self, inputs: Tensors) -> np.ndarray: ...

    async def model_ready(self) -> bool: ...

    async def fingerprint(self) -> str | None: ...

    async def close(self) -> None: ...


def _model_config_messages():
    """Request/response classes for Triton's `ModelConfig` RPC, declared with only the fields we read
    (name; config.parameters[*].string_value), in a private descriptor pool: tritonclient's generated
    protos cannot be imported beside kserve's (duplicate symbols)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(
        name="sentiment_model_config.proto", package="sentiment_probe", syntax="proto3"
    )
    T = descriptor_pb2.FieldDescriptorProto
    request = fdp.message_type.add(name="ModelConfigRequest")
    request.field.add(name="name", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    request.field.add(name="version", number=2, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    parameter = fdp.message_type.add(name="ModelParameter")
    parameter.field.add(name="string_value", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    config = fdp.message_type.add(name="ModelConfig")
    config.field.add(name="name", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    entry = config.nested_type.add(name="ParametersEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                    type_name=".sentiment_probe.ModelParameter")
    config.field.add(name="parameters", number=14, type=T.TYPE_MESSAGE, label=T.LABEL_REPEATED,
                     type_name=".sentiment_probe.ModelConfig.ParametersEntry")
    response = fdp.message_type.add(name="ModelConfigResponse")
    response.field.add(name="config", number=1, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                       type_name=".sentiment_probe.ModelConfig")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("sentiment_probe.ModelConfigRequest")), get(
        pool.FindMessageTypeByName("sentiment_probe.ModelConfigResponse"))


def _infer_request(model_name: str, inputs: Tensors, version: str = ""):
    from kserve import InferInput, InferRequest

    tensors = []
    for name, array in inputs.items():
        tensor = InferInput(name=name, shape=list(array.shape), datatype="INT64")
        tensor.set_data_from_numpy(array, binary_data=True)
        tensors.append(tensor)
    return InferRequest(model_name=model_name, infer_inputs=tensors, model_version=version or None)


def fingerprint_of(parameters: Mapping[str, str], version: str) -> str:
    """The fingerprint a model configuration declares for `version` ("" when it declares none)."""
    return parameters.get(f"fingerprint_v{version}", parameters.get("fingerprint", "")) if version else parameters.get(
        "fingerprint", "")


def _rows(inputs: Tensors) -> int:
    return next(iter(inputs.values())).shape[0]


def _logits(response, rows: int) -> np.ndarray:
    output = response.get_output_by_name(LOGITS)
    if output is None:
        raise PredictorUnavailable(f"the predictor answered without a '{LOGITS}' output")
    logits = output.as_numpy().astype(np.float32, copy=False)
    if logits.ndim != 2 or logits.shape[0] != rows:
        raise PredictorUnavailable(f"the predictor returned logits of shape {list(logits.shape)} for {rows} texts")
    return logits


class GrpcPredictor:
    """Triton over KServe V2 gRPC, with KServe's protobufs, on ONE channel: inference, readiness and
    the model configuration share it, so "ready" also means "this channel is connected" (with two
    channels, the probe reconnected first after a Triton restart and the first call still failed).
    Reconnects fast after a Triton restart (short reconnect backoff). Tracing on: a sampled call
    carries `traceparent` in its metadata, and Triton's spans join the caller's trace."""

    protocol = "grpc-v2"

    def __init__(self, host: str, model_name: str, timeout_s: float, use_ssl: bool = False, version: str = ""):
        import grpc

        self.host = host if ":" in host else f"{host}:{443 if use_ssl else 80}"
        self.model_name = model_name
        self.version = version
        self.timeout_s = timeout_s
        self.use_ssl = use_ssl
        self._rpc_error = grpc.RpcError
        self._channel = None

    def _connect(self) -> None:
        """The channel is made inside the running event loop (grpc.aio binds it to it)."""
        if self._channel is not None:
            return
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

        options = [
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 2_000),
        ]
        if self.use_ssl:
            channel = grpc.aio.secure_channel(self.host, grpc.ssl_channel_credentials(), options=options)
        else:
            channel = grpc.aio.insecure_channel(self.host, options=options)
        self._channel = channel
        self._pb = pb
        self._stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request_type, response_type = _model_config_messages()
        self._config_request = request_type
        self._model_config = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelConfig",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )

    def _request(self, inputs: Tensors):
        pb = self._pb
        request = pb.ModelInferRequest(model_name=self.model_name, model_version=self.version)
        for name, array in inputs.items():
            request.inputs.add(name=name, datatype="INT64", shape=list(array.shape))
            request.raw_input_contents.append(np.ascontiguousarray(array, dtype="<i8").tobytes())
        request.outputs.add(name=LOGITS)
        return request

    async def infer(self, inputs: Tensors) -> np.ndarray:
        self._connect()
        started = time.perf_counter()
        try:
            metadata = None
            if tracing.RECORDING.get():  # a sampled call
                headers = tracing.outgoing_headers()
                metadata = tuple(headers.items()) if headers else None
            response = await self._stub.ModelInfer(self._request(inputs), timeout=self.timeout_s, metadata=metadata)
        except self._rpc_error as error:
            code = error.code().name if hasattr(error, "code") else "UNKNOWN"
            metrics.PREDICTOR_ERRORS.labels(reason=code.lower()).inc()
            raise PredictorUnavailable(f"the predictor failed ({code}); retry shortly", reason=code.lower()) from None
        except asyncio.TimeoutError:
            metrics.PREDICTOR_ERRORS.labels(reason="timeout").inc()
            raise PredictorUnavailable(f"the predictor did not answer within {self.timeout_s:g} s") from None
        metrics.PREDICTOR_LATENCY.observe(time.perf_counter() - started)
        return _grpc_logits(response, _rows(inputs))

    async def model_ready(self) -> bool:
        """Is our version loaded and ready?"""
        self._connect()
        try:
            response = await self._stub.ModelReady(
                self._pb.ModelReadyRequest(name=self.model_name, version=self.version), timeout=min(self.timeout_s, 2.0)
            )
        except Exception:  # any transport failure means "not ready"
            return False
        return response.ready

    async def fingerprint(self) -> str | None:
        self._connect()
        try:
            response = await self._model_config(
                self._config_request(name=self.model_name), timeout=min(self.timeout_s, 2.0)
            )
        except self._rpc_error:
            return None
        parameters = {key: value.string_value for key, value in response.config.parameters.items()}
        return fingerprint_of(parameters, self.version)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def _grpc_logits(response, rows: int) -> np.ndarray:
    """FP32 `logits` [rows, labels] from a ModelInferResponse (raw output contents or typed)."""
    names = [output.name for output in response.outputs]
    if LOGITS not in names:
        raise PredictorUnavailable(f"the predictor answered without a '{LOGITS}' output")
    index = names.index(LOGITS)
    output = response.outputs[index]
    if response.raw_output_contents:
        values = np.frombuffer(response.raw_output_contents[index], dtype="<f4")
    else:
        values = np.asarray(output.contents.fp32_contents, dtype=np.float32)
    shape = list(output.shape)
    if output.datatype != "FP32" or len(shape) != 2 or shape[0] != rows or values.size != rows * shape[1]:
        raise PredictorUnavailable(f"the predictor returned logits {output.datatype} {shape} for {rows} texts")
    return values.reshape(shape)


class RestPredictor:
    """Triton over KServe V2 REST (binary tensor extension); a sampled call carries `traceparent`."""

    protocol = "v2"

    def __init__(self, host: str, model_name: str, timeout_s: float, use_ssl: bool = False, version: str = ""):
        import httpx
        from kserve import InferenceRESTClient, RESTConfig

        self.model_name = model_name
        self.version = version
        self.timeout_s = timeout_s
        self.base_url = f"{'https' if use_ssl else 'http'}://{host}"
        self._client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=timeout_s, retries=0))
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=min(timeout_s, 2.0))
        self._errors = (httpx.HTTPError, OSError, asyncio.TimeoutError)

    async def infer(self, inputs: Tensors) -> np.ndarray:
        started = time.perf_counter()
        try:
            # KServe's REST client builds /v2/models/<name>/infer: the version goes into the name's place.
            route = f"{self.model_name}/versions/{self.version}" if self.version else self.model_name
            headers = tracing.outgoing_headers() if tracing.RECORDING.get() else None
            response = await self._client.infer(self.base_url, _infer_request(self.model_name, inputs, self.version),
                                                model_name=route, headers=headers)
        except self._errors as error:
            metrics.PREDICTOR_ERRORS.labels(reason=type(error).__name__.lower()).inc()
            raise PredictorUnavailable(f"the predictor failed ({type(error).__name__}); retry shortly") from None
        metrics.PREDICTOR_LATENCY.observe(time.perf_counter() - started)
        return _logits(response, _rows(inputs))

    async def model_ready(self) -> bool:
        try:
            path = f"/v2/models/{self.model_name}" + (f"/versions/{self.version}" if self.version else "")
            return (await self._http.get(f"{path}/ready")).status_code == 200
        except self._errors:
            return False

    async def fingerprint(self) -> str | None:
        try:
            response = await self._http.get(f"/v2/models/{self.model_name}/config")
        except self._errors:
            return None
        if response.status_code != 200:
            return None
        parameters = response.json().get("parameters", {})
        return fingerprint_of({key: value.get("string_value", "") for key, value in parameters.items()}, self.version)

    async def close(self) -> None:
        await self._client.close()
        await self._http.aclose()


def build_predictor(settings, version: str = "") -> Predictor:
    cls = GrpcPredictor if settings.predictor_protocol == "grpc-v2" else RestPredictor
    return cls(settings.predictor_host, settings.model_name, settings.predictor_timeout_s, settings.predictor_use_ssl,
               version)
