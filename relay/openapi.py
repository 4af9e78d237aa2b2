"""The OpenAPI document, made from the routes themselves so it cannot drift from them."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backline.common import __version__

_PARAM = re.compile(r"{(\w+)(?::(\w+))?}")


def document() -> dict[str, Any]:
    from backline.relay import api, api_sessions, reports

    paths: dict[str, dict[str, Any]] = {}
    for route in [*api.ROUTES, *api_sessions.ROUTES, *reports.ROUTES]:
        path = _PARAM.sub(r"{\1}", route.path)
        params = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "integer" if conv == "int" else "string"}}
                  for name, conv in _PARAM.findall(route.path)]
        doc = (route.endpoint.__doc__ or "").strip()
        permission = getattr(route.endpoint, "permission", None)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            op: dict[str, Any] = {
                "operationId": f"{route.endpoint.__name__}_{method.lower()}",
                "summary": doc.split("\n")[0],
                "description": doc + (f"\n\nNeeds permission `{permission}`."
                                      if permission else ""),
                "parameters": params,
                "responses": {"200": {"description": "OK"},
                              "4XX": {"description": "Refused: {\"error\", \"detail\"}"}},
            }
            if method in ("POST", "PUT", "PATCH"):
                op["requestBody"] = {"content": {"application/json": {
                    "schema": {"type": "object"}}}}
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Backline relay API", "version": __version__},
        "components": {"securitySchemes": {
            "cookie": {"type": "apiKey", "in": "cookie", "name": "__Host-backline"},
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"cookie": []}, {"bearer": []}],
        "paths": paths,
    }


async def endpoint(request: Request) -> Response:
    return JSONResponse(document())
