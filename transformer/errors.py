"""Errors a client can act on. Each maps to one HTTP status and a JSON body {"error", "code"}."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the transformer reports to a client on purpose."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, **details: object):
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict:
        return {"error": self.message, "code": self.code, **self.details}


class InvalidRequest(ServiceError):
    """The body is not what the endpoint takes (422)."""

    status_code = 422
    code = "invalid_request"


class RequestTooLarge(ServiceError):
    """Over a configured limit: texts per request, characters per text, body bytes (413)."""

    status_code = 413
    code = "request_too_large"


class NotSupported(ServiceError):
    """The route exists in KServe's protocol but this model does not offer it (404)."""

    status_code = 404
    code = "not_supported"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class PredictorUnavailable(ServiceError):
    """Triton cannot be reached, is not ready, or did not answer in time (503)."""

    status_code = 503
    code = "predictor_unavailable"


class Overloaded(ServiceError):
    """An in-flight or queued-texts limit is reached; the client should retry later (503 + Retry-After)."""

    status_code = 503
    code = "overloaded"
