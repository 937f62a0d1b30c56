"""Errors the HTTP API answers with, in the OpenAI shape `{"error": {message, type, code}}`."""

from __future__ import annotations

from typing import Any

from p2pinfer.errors import P2PInferError


class ApiError(P2PInferError):
    """An error answered to an HTTP client: its status, OpenAI error type and code."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class BadRequest(ApiError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContextLengthExceeded(BadRequest):
    code = "context_length_exceeded"


class Unauthorized(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class BodyTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class TooManyRequests(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "too_many_requests"


class NoRouteAvailable(ApiError):
    status = 503
    type = "service_unavailable"
    code = "no_route"


class GenerationFailed(ApiError):
    status = 502
    type = "server_error"
    code = "inference_failed"
