"""A refused request: the HTTP status and OpenAI's error body {"error": {message, type, param,
code}}, raised anywhere below the routes and answered by `lladax.serve.app`."""

from __future__ import annotations

from typing import Any

ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 503: "server_overloaded"}


class RequestError(Exception):
    """One-line message naming the problem and the fix; `param` the offending body field."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        *,
        status: int = 400,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status
        self.code, self.retry_after = code, retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.status, self.param, self.code)


def error_body(
    message: str, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object for an HTTP status."""
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


__all__ = ["RequestError", "error_body"]
