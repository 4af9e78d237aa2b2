"""The API's edge: one parser for every request, one envelope for every refusal.

Every REST operation is declared with :func:`endpoint`: the permission it needs, the
pydantic models of its path, query and body, and the answers it can give. The
wrapper authenticates (:func:`~backline.relay.webauth.require`), parses and validates
the inputs *before* the handler runs, and turns any :class:`ApiError` into the one
envelope ``{"error": code, "detail": sentence}``, audited exactly once
(:func:`~backline.relay.webauth.audit_refusal`). The OpenAPI document is generated
from the same declarations (:mod:`backline.relay.api.openapi`), so what the relay checks
and what it documents cannot drift apart.

Why pydantic v2 (and not msgspec): its JSON Schema output is 2020-12, what OpenAPI 3.1
embeds as is; strict mode refuses ``"1"`` for an integer and ``1`` for a boolean; its
Rust JSON parser bounds nesting (a 100,000-deep array is a clean ``bad_json``, not a
``RecursionError``); and it is already in the relay's dependency tree (typer).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backline.relay.webauth import ApiError, Principal, audit_refusal, require

log = logging.getLogger("backline.relay.api")

#: The largest request body read, checked before reading (``Content-Length``) and
#: while reading (chunked bodies).
MAX_BODY = 64 * 1024
JSON = "application/json"


class Body(BaseModel):
    """A request body: unknown fields refused, no type coercion (``"1"`` is no int)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Params(BaseModel):
    """Path or query parameters: strings from the URL, converted by the field types
    below (ASCII digits only), unknown query parameters ignored (never read)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Reply(BaseModel):
    """An answer: built through its model, so the document's schema is what is sent."""

    model_config = ConfigDict(extra="forbid")


class NoBody(Body):
    """Operations that take no body accept none, or an empty JSON object (the console
    sends ``{}`` with every POST)."""


class Ok(Reply):
    ok: Literal[True] = True


class ErrorBody(Reply):
    """Every refusal, whatever the status: a stable code for programs, a sentence for
    people."""

    error: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64,
                       description="stable code, e.g. bad_field, forbidden, not_found")
    detail: str = Field(max_length=2048, description="what went wrong, in words")


# --- typed URL values -------------------------------------------------------------

_WHOLE = re.compile(r"[0-9]{1,19}", re.ASCII)
_DECIMAL = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?", re.ASCII)


def _ascii_whole(value: Any) -> Any:
    """``int()`` takes '٣' and '²' is a digit to ``str.isdigit``: only ASCII here."""
    if isinstance(value, str) and not _WHOLE.fullmatch(value):
        raise ValueError("must be a whole number in ASCII digits")
    return value


def _ascii_decimal(value: Any) -> Any:
    if isinstance(value, str) and not _DECIMAL.fullmatch(value):
        raise ValueError("must be a number of seconds in ASCII digits")
    return value


def whole(lo: int, hi: int, description: str = "") -> Any:
    """A whole number from ``lo`` to ``hi`` in a URL (ASCII digits only). The bounds
    come first so that they reach the JSON Schema (after a validator they would not)."""
    return Annotated[int, Field(ge=lo, le=hi, description=description or None),
                     BeforeValidator(_ascii_whole)]


#: A database id (a user's, a group's): a positive integer that fits the INTEGER
#: column, 32 bits in PostgreSQL. Up to 2**63 - 1 before: ids beyond 2**31 - 1 were a
#: 404 in SQLite and a 500 in PostgreSQL (integer out of range); now a 404 in both.
DbId = whole(1, 2**31 - 1)
#: A Unix time in seconds, from a query string.
UnixTime = Annotated[float, Field(ge=0, le=1e11), BeforeValidator(_ascii_decimal)]


# --- parsing ----------------------------------------------------------------------


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "the body"


def _refusal(exc: ValidationError, what: str) -> ApiError:
    """The first problem of a validation, as a stable code and a sentence. The
    offending value is never echoed (it may be a password)."""
    first = exc.errors(include_url=False, include_input=False)[0]
    kind, loc, msg = first["type"], tuple(first["loc"]), first["msg"]
    if kind == "json_invalid":
        return ApiError(400, "bad_json", "the request body is not valid JSON"
                        + (" (nested too deeply)" if "recursion" in msg else ""))
    if kind == "model_type" and not loc:
        return ApiError(400, "bad_json", "the request body must be a JSON object")
    if kind == "missing":
        return ApiError(400, "missing_field", f"{_where(loc)} is required")
    if kind == "extra_forbidden":
        return ApiError(400, "bad_field", f"unknown fields: {_where(loc)[:100]}")
    return ApiError(400, "bad_field", f"{what} {_where(loc)}: {msg}".strip()[:300])


def _media_type(request: Request) -> str | None:
    raw = request.headers.get("content-type")
    return None if raw is None else raw.split(";", 1)[0].strip().lower()


async def read_body(request: Request, model: type[Body], max_body: int = MAX_BODY) -> Any:
    """The body as ``model``: size bound first, then ``Content-Type: application/json``
    (a cross-site "simple" request can send ``text/plain`` or no type without a
    preflight), then the model's validation. ``max_body``: a larger bound for the one
    operation that takes one (a fix manifest with its scripts)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not _WHOLE.fullmatch(declared) or int(declared) > max_body):
        raise ApiError(413, "too_large", f"request bodies are at most {max_body} bytes")
    media = _media_type(request)
    if media is not None and media != JSON:
        raise ApiError(415, "unsupported_media_type", "request bodies are application/json")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_body:
            raise ApiError(413, "too_large", f"request bodies are at most {max_body} bytes")
    if not raw:
        raw += b"{}"
    elif media is None:
        raise ApiError(415, "unsupported_media_type", "request bodies are application/json")
    try:
        return model.model_validate_json(bytes(raw))
    except ValidationError as exc:
        raise _refusal(exc, "") from None


def validated(model: type[BaseModel], values: Any, what: str, status: int = 400) -> Any:
    """``values`` as ``model``, or the refusal (400, or 404 for ids in a path)."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = _refusal(exc, what)
        if status == 404:  # an id that cannot name anything names nothing
            raise ApiError(404, "not_found", f"no such {what}: "
                           + err.detail.split(": ", 1)[-1]) from None
        raise err from None


def reply(model: type[Reply], data: Any, status: int = 200,
          headers: dict[str, str] | None = None) -> JSONResponse:
    """An answer built through its model (a drift between the code and its documented
    schema is a 500 that names the field, caught by the tests and the fuzzer)."""
    value = data if isinstance(data, model) else model.model_validate(data)
    return JSONResponse(value.model_dump(mode="json"), status_code=status, headers=headers)


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse({"error": err.code, "detail": err.detail[:2048]},
                        status_code=err.status, headers=err.headers)


# --- the wrapper ------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """What one route accepts and answers; read by the wrapper and by the OpenAPI
    generator alike."""

    name: str
    summary: str
    permission: str | None
    body: type[Body] | None
    query: type[Params] | None
    path: type[Params] | None
    answers: dict[int, type[Reply] | str]
    refusals: frozenset[int]
    anonymous: bool = False
    path_noun: str = "item"


Handler = Callable[..., Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def relay_of(request: Request) -> Any:
    return request.app.state.relay


def _operation(handler: Handler, permission: str | None, body: type[Body] | None,
               query: type[Params] | None, path: type[Params] | None,
               answers: dict[int, type[Reply] | str] | None, refuses: tuple[int, ...],
               noun: str, anonymous: bool) -> Operation:
    return Operation(name=handler.__name__, summary=(handler.__doc__ or "").strip(),
                     permission=permission, body=body, query=query, path=path,
                     answers=answers or {200: Ok}, refusals=frozenset(refuses),
                     anonymous=anonymous, path_noun=noun)


def unwrapped(*, body: type[Body] | None = None,
              answers: dict[int, type[Reply] | str] | None = None,
              refuses: tuple[int, ...] = ()) -> Callable[[Endpoint], Endpoint]:
    """Describe an anonymous operation that parses and audits by itself (sign-in:
    nobody to authenticate yet), for the document only."""

    def wrap(handler: Endpoint) -> Endpoint:
        handler.operation = _operation(  # type: ignore[attr-defined]
            handler, None, body, None, None, answers, refuses, "item", True)
        return handler

    return wrap


def endpoint(permission: str | None, *, body: type[Body] | None = None,
             query: type[Params] | None = None, path: type[Params] | None = None,
             answers: dict[int, type[Reply] | str] | None = None,
             refuses: tuple[int, ...] = (), noun: str = "item",
             anonymous: bool = False, max_body: int = MAX_BODY) -> Callable[[Handler], Endpoint]:
    """Declare an operation. The handler is called as ``handler(request, relay, who,
    body=..., query=..., path=...)`` with the validated models it declared; ``who``
    is ``None`` only for ``anonymous`` operations (sign-in), which check nothing."""

    def wrap(handler: Handler) -> Endpoint:
        op = _operation(handler, permission, body, query, path, answers, refuses, noun,
                        anonymous)

        async def run(request: Request) -> Response:
            relay = relay_of(request)
            who: Principal | None = None
            try:
                if not anonymous:
                    who = require(relay, request, permission, request.method)
                kwargs: dict[str, Any] = {}
                if path is not None:
                    kwargs["path"] = validated(path, dict(request.path_params), noun, 404)
                if query is not None:
                    kwargs["query"] = validated(query, dict(request.query_params),
                                                "parameter")
                if body is not None or request.method not in ("GET", "HEAD", "DELETE"):
                    parsed = await read_body(request, body or NoBody, max_body)
                    if body is not None:
                        kwargs["body"] = parsed
                return await handler(request, relay, who, **kwargs)
            except ApiError as err:
                if err.principal is None:
                    err.principal = who
                audit_refusal(relay, request, err)
                return error_response(err)

        run.__doc__ = handler.__doc__
        run.__name__ = handler.__name__
        run.operation = op  # type: ignore[attr-defined]
        run.permission = permission  # type: ignore[attr-defined]
        return run

    return wrap
