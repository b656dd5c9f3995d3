"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}} with the HTTP status."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class OpenAIError(Exception):
    """Raised anywhere in request handling; the app turns it into an OpenAI-shaped response."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 err_type: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.err_type = err_type or _default_type(status)


def _default_type(status: int) -> str:
    if status == 401:
        return "AuthenticationError"
    if status == 404:
        return "NotFoundError"
    if status >= 500:
        return "InternalServerError"
    return "BadRequestError"


def error_body(message: str, status: int, param: str | None = None,
               err_type: str | None = None) -> dict:
    return {"error": {"message": message, "type": err_type or _default_type(status),
                      "param": param, "code": status}}


def error_response(err: OpenAIError) -> JSONResponse:
    return JSONResponse(error_body(err.message, err.status, err.param, err.err_type),
                        status_code=err.status)


def param_from_value_error(err: ValueError) -> str | None:
    """SamplingParams names the bad field first in its message ("temperature must be ...")."""
    first = str(err).split(" ", 1)[0].strip("`'\":")
    return first if first.isidentifier() else None

