"""`SentimentModel`: the kserve.Model that KServe's V1/V2 endpoints (REST and gRPC) call.

preprocess turns a V1 body or a V2 InferRequest into texts, predict classifies them (cache,
tokenizer, predictor), postprocess answers in the caller's protocol:
V1 -> {"predictions": [[{"label", "score"}, ...], ...]} (every label, ranked);
V2 -> outputs `label` BYTES [n], `score` FP32 [n], `probabilities` FP32 [n, num_labels].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model

from transformer.bundle import ModelBundle
from transformer.cache import Prediction, build_caches
from transformer.classifier import TextClassifier
from transformer.errors import InvalidRequest, NotSupported, PredictorUnavailable, RequestTooLarge, ServiceError
from transformer.predictor import build_predictor
from transformer.settings import Settings

log = logging.getLogger(__name__)

TEXT_INPUT = "text"


@dataclass
class Job:
    """What travels from preprocess to postprocess: the texts and how to answer."""

    texts: list[str]
    request: InferRequest | None  # None for V1
    predictions: list[Prediction] | None = None


def validate_texts(texts: Any, settings: Settings, field: str = "text") -> list[str]:
    """The shared limits of every route: a non-empty list of strings within the configured sizes."""
    if not isinstance(texts, list):
        raise InvalidRequest(f"'{field}' must be a list of strings, e.g. {{\"{field}\": [\"i love this\"]}}")
    if not texts:
        raise InvalidRequest(f"'{field}' is empty: send at least one text")
    if len(texts) > settings.max_texts:
        raise RequestTooLarge(f"{len(texts)} texts in one request; the limit is {settings.max_texts}: split the request",
                              limit=settings.max_texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidRequest(f"{field}[{index}] is {type(text).__name__}, expected a string", index=index)
        if len(text) > settings.max_text_chars:
            raise RequestTooLarge(f"{field}[{index}] has {len(text)} characters; the limit is {settings.max_text_chars}",
                                  index=index, limit=settings.max_text_chars)
    return texts


def texts_from_v2(request: InferRequest, settings: Settings) -> list[str]:
    tensor = request.get_input_by_name(TEXT_INPUT) if request.inputs else None
    if tensor is None or len(request.inputs) != 1:
        names = [t.name for t in request.inputs or []]
        raise InvalidRequest(f"expected exactly one input named '{TEXT_INPUT}' (BYTES, shape [n]); got {names}")
    if tensor.datatype != "BYTES":
        raise InvalidRequest(f"input '{TEXT_INPUT}' must have datatype BYTES, not {tensor.datatype}")
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise InvalidRequest(f"input '{TEXT_INPUT}' must have shape [n] (or [n, 1]), not {tensor.shape}")
    try:
        values = tensor.as_numpy().reshape(-1).tolist()
    except Exception:
        raise InvalidRequest(f"input '{TEXT_INPUT}' data does not match its shape {tensor.shape}") from None
    texts = []
    for index, value in enumerate(values):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(f"{TEXT_INPUT}[{index}] is not valid UTF-8", index=index) from None
        texts.append(value)
    return validate_texts(texts, settings, TEXT_INPUT)


def texts_from_v1(body: Any, settings: Settings) -> list[str]:
    if isinstance(body, (bytes, bytearray)):
        raise InvalidRequest("the body must be JSON sent with Content-Type: application/json")
    if not isinstance(body, dict) or "instances" not in body:
        raise InvalidRequest('expected a JSON object {"instances": ["text", ...]}')
    instances = body["instances"]
    if isinstance(instances, list):
        instances = [item.get("text") if isinstance(item, dict) else item for item in instances]
    return validate_texts(instances, settings, "instances")


class SentimentModel(Model):
    """Transformer-side model: owns the classifier and speaks KServe's protocols."""

    def __init__(self, settings: Settings):
        super().__init__(settings.model_name)
        self.settings = settings
        self.classifier: TextClassifier | None = None
        self.bundle: ModelBundle | None = None

    def load(self) -> bool:
        """Idempotent: KServe calls load() again whenever healthy() is False."""
        if self.classifier is None:
            bundle_dir = Path(self.settings.model_bundle)
            self.bundle = ModelBundle.load(bundle_dir)
            if self.bundle.model_name != self.name:
                log.warning("bundle was exported for model '%s', serving it as '%s'", self.bundle.model_name, self.name)
            memo, remote = build_caches(self.settings)
            self.classifier = TextClassifier(
                self.bundle, bundle_dir, build_predictor(self.settings), memo, remote,
                cache_prefix=self.settings.cache_prefix, pad_to_multiple=self.settings.pad_to_multiple,
                max_queued_texts=self.settings.max_queued_texts,
                tokenizer_threads=self.settings.tokenizer_threads,
                check_interval_s=self.settings.predictor_check_interval_s,
            )
            log.info("loaded bundle %s: labels %s, fingerprint %s, cache %s", bundle_dir, self.bundle.labels,
                     self.bundle.fingerprint[:12], self.classifier.cache_description)
        self.ready = True
        return True

    async def healthy(self) -> bool:
        """Ready to serve: bundle loaded and the predictor's fingerprint verified equal to ours.
        (Predictor outages are reported by /project/health; cached texts are still served.)"""
        return self.ready and self.classifier is not None and self.classifier.status.fingerprint == "match"

    def validate(self, payload):  # preprocess already validated; skip KServe's dict checks
        return payload

    async def preprocess(self, payload, headers=None) -> Job:
        if isinstance(payload, InferRequest):
            return Job(texts=texts_from_v2(payload, self.settings), request=payload)
        return Job(texts=texts_from_v1(payload, self.settings), request=None)

    async def predict(self, payload: Job, headers=None, response_headers=None) -> Job:
        assert self.classifier is not None
        payload.predictions = await self.classifier.classify(payload.texts)
        return payload

    async def postprocess(self, result: Job, headers=None, response_headers=None):
        assert self.classifier is not None and result.predictions is not None
        if result.request is None:
            return {"predictions": [prediction.ranked_json for prediction in result.predictions]}
        probabilities = np.array([p.probabilities for p in result.predictions], dtype=np.float32)
        return self._v2_response(result.request, probabilities)

    def _v2_response(self, request: InferRequest, probabilities: np.ndarray) -> InferResponse:
        labels = np.array(self.classifier.labels, dtype=object)
        best = probabilities.argmax(axis=1)
        binary = request.use_binary_outputs
        outputs = []
        for name, datatype, array in (
            ("label", "BYTES", np.array([labels[i].encode() for i in best], dtype=object)),
            ("score", "FP32", probabilities[np.arange(len(best)), best].astype(np.float32)),
            ("probabilities", "FP32", probabilities.astype(np.float32)),
        ):
            output = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
            output.set_data_from_numpy(array, binary_data=binary)
            outputs.append(output)
        return InferResponse(response_id=request.id or "", model_name=self.name, infer_outputs=outputs,
                             from_grpc=request.from_grpc, use_binary_outputs=binary,
                             requested_outputs=request.request_outputs)

    async def explain(self, payload, headers=None):
        raise NotSupported(f"model '{self.name}' has no explainer; use :predict")

    def get_input_types(self) -> list[dict]:
        return [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        num_labels = len(self.bundle.labels) if self.bundle else -1
        return [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, num_labels]},
        ]

    async def __call__(self, body, headers=None, verb=None):
        """gRPC callers get proper status codes for our errors (REST uses the app's handlers)."""
        from kserve.model import InferenceVerb

        try:
            return await super().__call__(body, headers=headers, verb=verb or InferenceVerb.PREDICT)
        except ServiceError as error:
            if isinstance(body, InferRequest) and body.from_grpc:
                raise grpc_error(error) from None
            raise


def grpc_error(error: ServiceError):
    from grpc_interceptor import exceptions

    if isinstance(error, PredictorUnavailable) or error.status_code == 503:
        return exceptions.Unavailable(error.message)
    if isinstance(error, RequestTooLarge):
        return exceptions.ResourceExhausted(error.message)
    return exceptions.InvalidArgument(error.message)
