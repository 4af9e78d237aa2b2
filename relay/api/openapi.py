"""The OpenAPI 3.1 document, generated from the operations' own declarations.

Each route's :class:`~backline.relay.api.edge.Operation` names the models its path,
query and body are parsed with and the answers it gives; the request and response
schemas are those models' JSON Schema (2020-12, what OpenAPI 3.1 embeds). The
refusals are derived from what the wrapper itself can refuse (401 and 403 when it
authenticates, 400/413/415 when it reads a body, 404 for a path id) plus the ones
each handler declares, so every status the relay can answer on a route is listed,
each with the one error envelope. The fuzzing test (tests/integration/test_openapi_fuzz.py)
holds the relay to it.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backline.common import __version__
from backline.relay.api.edge import ErrorBody, Operation, Reply
from backline.relay.webauth import PASSWORD_CHANGE_PATHS, SAFE_METHODS

_PARAM = re.compile(r"{(\w+)(?::\w+)?}")
REF = "#/components/schemas/{model}"

STATUS_TEXT = {
    200: "OK", 201: "Created", 202: "Accepted (started; ask for its progress)",
    400: "Refused: the request is malformed (bad_json, missing_field, bad_field, ...)",
    401: "Refused: not signed in, or the API token is refused (unauthenticated, token_*, "
         "bad_credentials, totp_required)",
    403: "Refused: not allowed (forbidden, csrf, bad_origin, password_change_required, "
         "totp_enrolment_required, ...)",
    404: "Refused: no such thing (not_found)",
    409: "Refused: the state does not allow it (offline, not_open, revoked, ...)",
    410: "Gone: its content was deleted by the retention policy (deleted); the row and "
         "its SHA-256 stay",
    413: "Refused: the body is over 64 KiB, or what was asked for is over its limit "
         "(too_large)",
    415: "Refused: the body is not application/json (unsupported_media_type)",
    429: "Refused: too many attempts; see Retry-After (rate_limited)",
    500: "The relay failed (internal), or stored data is damaged (damaged)",
    502: "The agent's side failed (dial_failed, channel_failed, ...)",
    503: "Busy: too many password checks at once; see Retry-After (busy)",
    504: "The agent did not answer in time (timeout)",
}


def _routes() -> list[Any]:
    from backline.relay.api.routes import ROUTES

    return list(ROUTES)


def refusals(op: Operation, method: str, path: str) -> set[int]:
    """Every refusal status an operation can answer with."""
    statuses = {500, *op.refusals}
    if not op.anonymous:
        statuses.add(401)
        if not (method in SAFE_METHODS and op.permission is None
                and path in PASSWORD_CHANGE_PATHS):
            statuses.add(403)
    if op.body is not None or method not in ("GET", "HEAD", "DELETE"):
        statuses |= {400, 413, 415}
    if op.query is not None:
        statuses.add(400)
    if op.path is not None:
        statuses.add(404)
    return statuses


def _plain(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without the ``null`` branch of an optional field (a URL
    parameter is absent, never null)."""
    options = schema.get("anyOf")
    if options and any(o.get("type") == "null" for o in options):
        rest = [o for o in options if o.get("type") != "null"]
        out = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        if len(rest) == 1:
            out.update(rest[0])
        else:
            out["anyOf"] = rest
        return out
    return {k: v for k, v in schema.items() if k != "title"}


def _parameters(model: type[BaseModel] | None, where: str) -> list[dict[str, Any]]:
    if model is None:
        return []
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    return [{"name": name, "in": where, "required": where == "path" or name in required,
             "schema": _plain(prop)} for name, prop in schema["properties"].items()]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


@cache
def document() -> dict[str, Any]:
    models: dict[type[BaseModel], str] = {ErrorBody: "serialization"}
    paths: dict[str, dict[str, Any]] = {}
    for route in _routes():
        op: Operation = route.endpoint.operation
        path = _PARAM.sub(r"{\1}", route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            doc = op.summary
            entry: dict[str, Any] = {
                "operationId": op.name,
                "summary": doc.split("\n")[0],
                "description": doc + (f"\n\nNeeds permission `{op.permission}`."
                                      if op.permission else ""),
                "parameters": _parameters(op.path, "path") + _parameters(op.query, "query"),
                "responses": {},
            }
            if op.anonymous:
                entry["security"] = []
            if op.body is not None:
                models[op.body] = "validation"
                fields = op.body.model_json_schema().get("required", [])
                entry["requestBody"] = {"required": bool(fields), "content": {
                    "application/json": {"schema": _ref(op.body)}}}
            for status, answer in sorted(op.answers.items()):
                if isinstance(answer, str):
                    content = {answer: {"schema": {"type": "string"}}}
                else:
                    models[answer] = "serialization"
                    content = {"application/json": {"schema": _ref(answer)}}
                entry["responses"][str(status)] = {"description": STATUS_TEXT[status],
                                                   "content": content}
            for status in sorted(refusals(op, method, path)):
                entry["responses"][str(status)] = {
                    "description": STATUS_TEXT[status],
                    "content": {"application/json": {"schema": _ref(ErrorBody)}}}
            paths.setdefault(path, {})[method.lower()] = entry
    _, defs = models_json_schema([(m, mode) for m, mode in models.items()],  # type: ignore[misc]
                                 ref_template=REF)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Backline relay API", "version": __version__,
                 "description": "Every refusal is `{\"error\": code, \"detail\": sentence}` "
                                "(the ErrorBody schema)."},
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "cookie": {"type": "apiKey", "in": "cookie", "name": "__Host-backline"},
                "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"cookie": []}, {"bearer": []}],
        "paths": paths,
    }


async def endpoint(request: Request) -> Response:
    return JSONResponse(document())


__all__ = ["Reply", "document", "endpoint", "refusals"]
