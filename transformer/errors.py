"""Errors a client can act on, and the one table that gives each its HTTP and gRPC status.

Every transport answers an error the same way: REST with the HTTP status and a JSON body
`{"error": "<what to fix>", "code": "<code>"}`, gRPC with the status of the same row, the message
as details and the code in the trailing metadata `sentiment-error-code`.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

ERROR_CODE_METADATA = "sentiment-error-code"
MAX_ECHO = 64  # characters of a client-supplied name quoted back in a message


@dataclass(frozen=True)
class ErrorKind:
    http_status: int
    grpc_status: grpc.StatusCode


# code -> statuses; README's errors table is this table (a test holds them together).
ERROR_TABLE: dict[str, ErrorKind] = {
    "invalid_request": ErrorKind(422, grpc.StatusCode.INVALID_ARGUMENT),
    "request_too_large": ErrorKind(413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    "unsupported_media_type": ErrorKind(415, grpc.StatusCode.INVALID_ARGUMENT),
    "request_timeout": ErrorKind(408, grpc.StatusCode.DEADLINE_EXCEEDED),
    "unauthorized": ErrorKind(401, grpc.StatusCode.UNAUTHENTICATED),
    "model_not_found": ErrorKind(404, grpc.StatusCode.NOT_FOUND),
    "not_found": ErrorKind(404, grpc.StatusCode.NOT_FOUND),
    "not_served": ErrorKind(404, grpc.StatusCode.UNIMPLEMENTED),
    "method_not_allowed": ErrorKind(405, grpc.StatusCode.UNIMPLEMENTED),
    "overloaded": ErrorKind(503, grpc.StatusCode.UNAVAILABLE),
    "predictor_unavailable": ErrorKind(503, grpc.StatusCode.UNAVAILABLE),
    "timeout": ErrorKind(504, grpc.StatusCode.DEADLINE_EXCEEDED),
    "internal_error": ErrorKind(500, grpc.StatusCode.INTERNAL),
}
# What a client that went away is counted as (never answered): nginx's 499, gRPC's CANCELLED.
CLIENT_CLOSED_STATUS = 499
# The code of an error answer that KServe or Starlette made with a bare HTTP status.
_CODE_OF_STATUS = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
                   415: "unsupported_media_type", 422: "invalid_request", 500: "internal_error",
                   503: "predictor_unavailable"}


def code_of_status(status: int) -> str:
    return _CODE_OF_STATUS.get(status, "http_error")


def echo(value: str) -> str:
    """A client-supplied name, cut so that an error message never echoes a huge input back."""
    return value if len(value) <= MAX_ECHO else value[:MAX_ECHO] + f"... ({len(value)} characters)"


class ServiceError(Exception):
    """Base of every error the transformer reports to a client on purpose."""

    code = "internal_error"

    def __init__(self, message: str, **details: object):
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def kind(self) -> ErrorKind:
        return ERROR_TABLE[self.code]

    @property
    def status_code(self) -> int:
        return self.kind.http_status

    def body(self) -> dict:
        return {"error": self.message, "code": self.code, **self.details}


class InvalidRequest(ServiceError):
    """The body is not what the endpoint takes."""

    code = "invalid_request"


class RequestTooLarge(ServiceError):
    """Over a configured limit: texts per request, characters per text, tokens, body bytes."""

    code = "request_too_large"


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"


class RequestTimeout(ServiceError):
    """The client did not send its whole body within the body timeout."""

    code = "request_timeout"


class Unauthorized(ServiceError):
    """API keys are configured and the call carries none, or not one of them."""

    code = "unauthorized"


class ModelNotFound(ServiceError):
    """Another model name or version than the one this transformer serves."""

    code = "model_not_found"


class NotServed(ServiceError):
    """A route or RPC of KServe's protocols this service deliberately does not offer
    (model repository load/unload/index, explain)."""

    code = "not_served"


class MethodNotAllowed(ServiceError):
    code = "method_not_allowed"


class Overloaded(ServiceError):
    """In-flight or expected-wait limit reached; retry later (503 + Retry-After)."""

    code = "overloaded"


class PredictorUnavailable(ServiceError):
    """Triton cannot be reached, is not ready, does not serve our version, or did not answer in time."""

    code = "predictor_unavailable"


class ProcessingTimeout(ServiceError):
    """The request was admitted but not finished within the request timeout."""

    code = "timeout"
