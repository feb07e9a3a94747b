"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with a 4xx or 5xx status.

OpenAI's clients read this shape (the Python client raises BadRequestError, RateLimitError... from the status and
shows `message`), so every refusal of the server uses it, including the ones Starlette itself makes (404, 405).
"""

from __future__ import annotations

# status -> OpenAI's error type for it
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """A request the server refuses or could not finish; `status` is the HTTP status."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, code=code, param=param)


def timeout_error(timeout_s: float) -> APIError:
    return APIError(504, f"the request took longer than the server's limit of {timeout_s:g} s (queue wait + answer): "
                         "ask for fewer max_tokens, or raise --request-timeout", code="timeout")
