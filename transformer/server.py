"""KServe's ModelServer, with our transports in front of its data plane.

`SentimentModelServer.start` is KServe's, with three changes: the REST side gets our transport as
the outermost ASGI middleware and uvicorn gets a protocol with header timeouts; the gRPC side is
our own server (`transport.grpc_server`) instead of KServe's, so that inference, limits and errors
match REST and the model-repository RPCs are closed; both listen on `BIND_ADDRESS` (KServe 0.21
hard-codes 0.0.0.0 for REST and [::] for gRPC).
"""

from __future__ import annotations

import kserve
from kserve.model_server import app
from kserve.protocol.dataplane import DataPlane

from transformer.settings import Settings
from transformer.transport import http_guard
from transformer.transport.app_routes import register_routes
from transformer.transport.grpc_server import GrpcTransport, GuardedServicer
from transformer.transport.kserve_model import SentimentModel
from transformer.transport.rest import RestTransport


class VersionedDataPlane(DataPlane):
    """KServe's data plane, whose model metadata names the version the model serves (KServe's own
    leaves `versions` empty) and, in `platform`, how its scores are made (`text-classification/softmax`,
    `/sigmoid` for multi-label, `/none` for regression): the one free field V2 metadata has on both
    REST and gRPC."""

    async def model_metadata(self, model_name: str) -> dict:
        metadata = await super().model_metadata(model_name)
        model = self.get_model_from_registry(model_name)
        version = getattr(model, "version", "")
        metadata["versions"] = [version] if version else None
        metadata["platform"] = getattr(model, "platform", "")
        return metadata


class SentimentModelServer(kserve.ModelServer):
    def __init__(self, settings: Settings, **kwargs):
        grpc_enabled = kwargs.pop("enable_grpc", True)
        super().__init__(enable_grpc=False, **kwargs)
        self.dataplane = VersionedDataPlane(model_registry=self.registered_models)
        self.settings = settings
        self._serve_grpc = grpc_enabled

    def start(self, models: list[SentimentModel]) -> None:
        model = models[0]
        core = model.core
        assert core is not None, "load() the model before starting the server"
        register_routes(app, model)
        app.add_middleware(RestTransport, core=core, model_name=model.name)
        http_guard.install(self.settings.header_timeout_s)
        if self._serve_grpc:
            servicer = GuardedServicer(self.dataplane, self.model_repository_extension, core, model.name)
            self._grpc_server = GrpcTransport(self.grpc_port, servicer, self.settings.max_body_bytes, self.grace_period,
                                              self.settings.bind_address)
            self.servers.append(self._grpc_server.start())
        super().start(models)

    def setup_event_loop(self) -> None:
        """KServe's start() calls this after it built its REST server and before that server binds:
        the one place to give uvicorn our address instead of KServe's hard-coded 0.0.0.0."""
        if self._rest_server is not None:
            self._rest_server.config.host = self.settings.bind_address
        super().setup_event_loop()
