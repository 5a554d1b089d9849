"""The one table from ranktune errors to HTTP, and the handlers that apply it.

Every error body is `{"error": {"code": ..., "message": ...}}` (validation errors add `details`, one
entry per bad field). An exception's class is looked up along its MRO, so a subclass inherits its
family's status unless the table names it. Anything unexpected is a logged 500 that leaks nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.errors import (
    ArtifactCorrupt,
    ArtifactMissing,
    InvalidVersionName,
    RanktuneError,
    SwapRefused,
)
from daemon.errors import AuthError, BadRequest, DaemonError, Overloaded
from daemon.serving.scorer import ScorerUnavailable, ScoreTimeout
from storage.errors import DatabaseUnavailable, InvalidTransition, StorageError, VersionNotFound

log = logging.getLogger(__name__)


class OperatorDisabled(DaemonError, PermissionError):
    """Operator endpoints are off because no RANKTUNE_API_TOKEN is configured (403)."""


class PayloadTooLarge(BadRequest):
    """The request body is over `api_max_body_bytes` (413)."""


class UnknownItems(BadRequest, LookupError):
    """Items sent without text that the catalog does not know (422)."""


# class -> (HTTP status, error code). Looked up along the MRO: the most specific entry wins.
ERROR_TABLE: dict[type[BaseException], tuple[int, str]] = {
    PayloadTooLarge: (413, "payload_too_large"),
    UnknownItems: (422, "unknown_items"),
    BadRequest: (400, "bad_request"),
    InvalidVersionName: (400, "invalid_version_name"),
    AuthError: (401, "unauthorized"),
    OperatorDisabled: (403, "operator_disabled"),
    VersionNotFound: (404, "version_not_found"),
    InvalidTransition: (409, "invalid_transition"),
    ArtifactCorrupt: (409, "artifact_corrupt"),
    ArtifactMissing: (409, "artifact_missing"),
    SwapRefused: (409, "swap_refused"),
    Overloaded: (503, "overloaded"),
    ScorerUnavailable: (503, "not_ready"),
    DatabaseUnavailable: (503, "database_unavailable"),
    ScoreTimeout: (504, "timeout"),
    StorageError: (500, "storage_error"),
    RanktuneError: (500, "internal_error"),
}

_RETRY_AFTER = {503: "1"}


def status_for(exc: BaseException) -> tuple[int, str]:
    """HTTP status and error code of `exc` (500/internal_error when the table has no ancestor of it)."""
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return 500, "internal_error"


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if details:
        err["details"] = details
    return {"error": err}


def _respond(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if status in _RETRY_AFTER:
        headers.setdefault("Retry-After", _RETRY_AFTER[status])
    return JSONResponse(status_code=status, content=body, headers=headers or None)


async def _ranktune_error(request: Request, exc: Exception) -> JSONResponse:
    status, code = status_for(exc)
    if status >= 500:
        log.error("%s %s -> %d %s: %s", request.method, request.url.path, status, code, exc)
    message = str(exc) if status < 500 or status in (503, 504) else "internal error; see the server log"
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _respond(status, error_body(code, message), headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return _respond(400, error_body("invalid_json", "request body is not valid JSON"))
    details = [{"field": _field(e.get("loc", ())), "message": str(e.get("msg", "invalid"))} for e in errors]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return _respond(422, error_body("invalid_request", f"invalid request: {summary}", details))


def _field(loc: Any) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _respond(exc.status_code, error_body(code, str(exc.detail)), dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return _respond(500, error_body("internal_error", "internal error; see the server log"))


def install_error_handlers(app: FastAPI) -> None:
    """One handler for the whole ranktune family, plus validation and HTTP errors."""
    app.add_exception_handler(RanktuneError, _ranktune_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
