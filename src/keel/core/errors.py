"""Keel's error tree and its one rendering: RFC 9457 `application/problem+json`.

    KeelError (500)
     ├── BadRequest (400)
     │    ├── MalformedJSON
     │    ├── JSONTooDeep
     │    └── InvalidHost
     ├── Unauthenticated (401)
     ├── Forbidden (403)
     │    └── OriginRejected
     ├── NotFound (404)
     ├── Conflict (409)
     ├── PayloadTooLarge (413)
     ├── ValidationFailed (422)
     ├── ServiceUnavailable (503)
     └── StartupError (not an HTTP error: the CLI prints it as one line)

The class docstring is the default `detail`. A rendered problem never carries a stack trace,
SQL, a secret or a file path: unexpected exceptions become a generic 500 whose only handle is
the `trace_id`, under which the full exception is logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from keel.core.context import current_trace, response_record

__all__ = [
    "BadRequest",
    "Conflict",
    "ErrorsMiddleware",
    "Forbidden",
    "InvalidHost",
    "JSONTooDeep",
    "KeelError",
    "MalformedJSON",
    "NotFound",
    "OriginRejected",
    "PayloadTooLarge",
    "Problem",
    "ServiceUnavailable",
    "StartupError",
    "Unauthenticated",
    "ValidationFailed",
    "error_response",
    "install_exception_handlers",
    "problem_body",
    "problem_response",
    "problem_responses",
]

PROBLEM_TYPE_PREFIX = "urn:keel:problem:"
PROBLEM_CONTENT_TYPE = "application/problem+json"

_HTTP_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    428: "Precondition Required",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class KeelError(Exception):
    """An unexpected error occurred."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal Server Error"
    expose: bool = False
    """Whether `detail` (and headers) may reach the client; client errors always may."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "expose" not in cls.__dict__:
            cls.expose = cls.status < 500

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        hint: str | None = None,
    ) -> None:
        self.detail = detail or (type(self).__doc__ or self.title).strip()
        self.errors = list(errors) if errors else None
        self.headers: Mapping[str, str] | None = dict(headers) if headers else None
        self.hint = hint
        # Not super(): in errors that are also HTTPExceptions the next class would take
        # `detail` for a status code.
        Exception.__init__(self, self.detail)

    @property
    def problem_type(self) -> str:
        """The problem `type` URI."""
        return PROBLEM_TYPE_PREFIX + self.slug


class _RaisedFromBody(KeelError, HTTPException):
    """Base of errors raised while the body is read.

    FastAPI turns any exception raised while it reads a body into a 400, except
    `HTTPException`; these errors are both, so their status survives.
    """

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        KeelError.__init__(self, detail, **kwargs)
        self.status_code = self.status


class BadRequest(KeelError):
    """The request could not be understood."""

    status = 400
    slug = "bad-request"
    title = "Bad Request"


class MalformedJSON(_RaisedFromBody, BadRequest):
    """The request body is not valid JSON."""

    slug = "malformed-json"
    title = "Malformed JSON"


class JSONTooDeep(_RaisedFromBody, BadRequest):
    """The request body nests JSON deeper than allowed."""

    slug = "json-too-deep"
    title = "JSON Too Deeply Nested"


class InvalidHost(BadRequest):
    """The Host header names a host this server does not answer for."""

    slug = "invalid-host"
    title = "Invalid Host Header"


class Unauthenticated(KeelError):
    """Authentication is required."""

    status = 401
    slug = "unauthenticated"
    title = "Unauthenticated"


class Forbidden(KeelError):
    """You are not allowed to do this."""

    status = 403
    slug = "forbidden"
    title = "Forbidden"


class OriginRejected(Forbidden):
    """Cross-origin requests from this origin are not allowed."""

    slug = "origin-rejected"
    title = "Origin Not Allowed"


class NotFound(KeelError):
    """The resource was not found."""

    status = 404
    slug = "not-found"
    title = "Not Found"


class Conflict(KeelError):
    """The request conflicts with the current state."""

    status = 409
    slug = "conflict"
    title = "Conflict"


class PayloadTooLarge(_RaisedFromBody):
    """The request body is larger than allowed."""

    status = 413
    slug = "payload-too-large"
    title = "Content Too Large"


class ValidationFailed(KeelError):
    """The request has invalid fields."""

    status = 422
    slug = "validation-failed"
    title = "Validation Failed"


class ServiceUnavailable(KeelError):
    """The service is temporarily unavailable."""

    status = 503
    expose = True
    slug = "service-unavailable"
    title = "Service Unavailable"


class StartupError(KeelError):
    """Keel cannot start."""

    slug = "startup-error"
    title = "Startup Error"


class FieldProblem(BaseModel):
    """One invalid field of a request."""

    location: str = Field(description="body, query, path, header or cookie")
    pointer: str = Field(description="JSON pointer to the field within its location")
    detail: str
    code: str


class Problem(BaseModel):
    """An RFC 9457 problem document, as every Keel error is rendered."""

    type: str = Field(description="`urn:keel:problem:<slug>`, or about:blank")
    title: str
    status: int
    detail: str | None = None
    trace_id: str | None = Field(description="Look the failure up in the logs by this id")
    errors: list[FieldProblem] | None = None
    hint: str | None = None


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting problem+json answers for `statuses`."""
    return {
        status: {
            "description": _HTTP_TITLES.get(status, "Error"),
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


def problem_body(
    *,
    status: int,
    slug: str | None = None,
    title: str | None = None,
    detail: str | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """Serialise one problem document, stamped with the current `trace_id`."""
    title = title or _HTTP_TITLES.get(status, "Error")
    document: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + slug if slug else "about:blank",
        "title": title,
        "status": status,
    }
    if detail:
        document["detail"] = detail
    trace = current_trace()
    document["trace_id"] = trace.trace_id if trace else None
    if errors:
        document["errors"] = list(errors)
    if extra:
        document.update(extra)
    return orjson.dumps(document)


def problem_response(error: KeelError) -> Response:
    """The HTTP response for a Keel error."""
    extra = {"hint": error.hint} if error.hint else None
    body = problem_body(
        status=error.status,
        slug=error.slug,
        title=error.title,
        detail=error.detail,
        errors=error.errors,
        extra=extra,
    )
    return Response(
        body, status_code=error.status, headers=error.headers, media_type=PROBLEM_CONTENT_TYPE
    )


def _http_exception_response(exc: HTTPException) -> Response:
    # Starlette's own 404/405 carry its stock phrase as detail; only a string chosen by the
    # application is worth repeating.
    raw: object = exc.detail  # FastAPI's HTTPException allows any JSON value here
    detail = raw if isinstance(raw, str) else None
    if detail == _HTTP_TITLES.get(exc.status_code):
        detail = None
    body = problem_body(status=exc.status_code, detail=detail)
    return Response(
        body, status_code=exc.status_code, headers=exc.headers, media_type=PROBLEM_CONTENT_TYPE
    )


_POINTER_ESCAPES = str.maketrans({"~": "~0", "/": "~1"})


def _field_error(error: Mapping[str, Any]) -> dict[str, Any]:
    location = [str(part) for part in error.get("loc", ())]
    where, path = (location[0], location[1:]) if location else ("body", [])
    # The offending input is left out on purpose: it may be a password or a token.
    return {
        "location": where,
        "pointer": "/" + "/".join(part.translate(_POINTER_ESCAPES) for part in path),
        "detail": str(error.get("msg", "invalid value")),
        "code": str(error.get("type", "invalid")),
    }


def _validation_response(exc: RequestValidationError) -> Response:
    errors = list(exc.errors())
    invalid = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if invalid is not None:
        context = invalid.get("ctx") or {}
        reason = str(context.get("error", "")) if isinstance(context, Mapping) else ""
        location = invalid.get("loc", ())
        position = location[-1] if len(location) > 1 and isinstance(location[-1], int) else None
        detail = "The request body is not valid JSON"
        if reason:
            detail += f": {reason}"
        if position is not None:
            detail += f" (at character {position})"
        return problem_response(MalformedJSON(detail + "."))
    return problem_response(
        ValidationFailed(
            f"{len(errors)} field(s) failed validation.",
            errors=[_field_error(error) for error in errors],
        )
    )


def error_response(exc: Exception, scope: Scope) -> Response:
    """The one mapping from an exception to its problem response.

    Client errors (and server errors marked `expose`, like 503 with Retry-After) are shown as
    they are; anything else is logged with its stack and answered with a generic 500 body.
    """
    if isinstance(exc, KeelError) and exc.expose:
        return problem_response(exc)
    if isinstance(exc, RequestValidationError):
        return _validation_response(exc)
    if isinstance(exc, HTTPException) and not isinstance(exc, KeelError) and exc.status_code < 500:
        return _http_exception_response(exc)
    if _rejected_nul(exc):
        return problem_response(BadRequest("Text must not contain NUL (U+0000) characters."))
    _log_unexpected(scope, exc)
    status = exc.status if isinstance(exc, KeelError) else 500
    return Response(
        problem_body(status=status, detail="An unexpected error occurred."),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
    )


def _rejected_nul(exc: BaseException) -> bool:
    """Whether the database driver refused a text value holding NUL (PostgreSQL cannot store
    it): the client's input, not a server fault."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if "cannot contain NUL" in str(seen):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__ or seen.__context__
    return False


async def _handle(request: Request, exc: Exception) -> Response:
    return error_response(exc, request.scope)


def install_exception_handlers(app: FastAPI) -> None:
    """Make FastAPI render Keel errors, HTTP errors and validation errors as problems."""
    app.add_exception_handler(KeelError, _handle)
    app.add_exception_handler(HTTPException, _handle)
    app.add_exception_handler(RequestValidationError, _handle)


class ErrorsMiddleware:
    """Turn any exception that escapes the application into a problem response.

    Exceptions the application did not expect are logged with their stack trace here, and the
    client receives only a generic 500 carrying the `trace_id` to look it up by.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record, inner_send = response_record(scope, send)
        try:
            await self.app(scope, receive, inner_send)
        except Exception as exc:
            if record.status is not None:
                # Too late for a problem document: let the server abort the connection.
                raise
            await error_response(exc, scope)(scope, receive, inner_send)


def _log_unexpected(scope: Scope, exc: BaseException) -> None:
    import structlog

    structlog.get_logger("keel.errors").error(
        "unhandled exception",
        method=scope.get("method"),
        path=scope.get("path"),
        exc_info=exc,
    )
