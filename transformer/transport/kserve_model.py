"""`SentimentModel`: the kserve.Model that KServe's registry, metadata and readiness routes know.

Inference does not go through KServe's data plane: the REST and gRPC transports hand every
request to the core themselves (one admission path for every protocol). This class tells KServe
what the model looks like (V2 metadata: input `text` BYTES [n]; outputs `label` BYTES [n],
`score` FP32 [n], `probabilities` FP32 [n, num_labels], and with `details` the INT32 `tokens` and
`windows` and the BOOL `truncated`; `platform` `text-classification/<softmax|sigmoid|none>`, the
bundle's score function) and whether it is ready to serve.
"""

from __future__ import annotations

import logging

from kserve import Model

from transformer.core.service import ServingCore
from transformer.errors import NotServed
from transformer.settings import Settings
from transformer.transport.v2 import TEXT_INPUT

log = logging.getLogger(__name__)
PLATFORM = "text-classification"


class SentimentModel(Model):
    def __init__(self, settings: Settings):
        super().__init__(settings.model_name)
        self.settings = settings
        self.core: ServingCore | None = None

    def load(self) -> bool:
        """Idempotent: KServe calls load() again whenever healthy() is False."""
        if self.core is None:
            self.core = ServingCore.from_settings(self.settings)
        self.ready = True
        return True

    @property
    def version(self) -> str:
        return self.core.version if self.core else ""

    @property
    def platform(self) -> str:
        """V2 metadata `platform`: the score function of the bundle being served."""
        return f"{PLATFORM}/{self.core.generation.bundle.score_function}" if self.core else PLATFORM

    async def healthy(self) -> bool:
        """Ready to serve: the bundle is loaded and the predictor serves its model (fingerprint
        verified). A predictor that went away flips this too: never ready while it cannot serve."""
        return self.ready and self.core is not None and self.core.ready

    async def __call__(self, body, headers=None, verb=None):
        raise NotServed("inference is served by the transformer's own transports")

    def get_input_types(self) -> list[dict]:
        return [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        num_labels = len(self.core.labels) if self.core else -1
        return [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, num_labels]},
            {"name": "tokens", "datatype": "INT32", "shape": [-1]},
            {"name": "windows", "datatype": "INT32", "shape": [-1]},
            {"name": "truncated", "datatype": "BOOL", "shape": [-1]},
        ]
