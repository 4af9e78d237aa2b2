"""Every REST route of ``/api/v1``, gathered from the resource modules (one per resource).

Adding a resource: write ``relay/api/<resource>.py`` with its handlers (each wrapped by
:func:`backline.relay.api.edge.endpoint`) and a ``ROUTES`` list, then name it here; the
OpenAPI document (``openapi.py``) and the app pick it up from this list.
"""

from __future__ import annotations

from starlette.routing import Route

from backline.relay.api import (
    agents,
    api_tokens,
    audit,
    auth,
    enroll_tokens,
    fixes,
    legal_holds,
    management_reports,
    recordings,
    reports,
    session_outcome,
    sessions,
    timeline,
    users,
)

RESOURCES = (auth, agents, users, enroll_tokens, api_tokens, audit, sessions, reports,
             recordings, fixes, timeline, session_outcome, management_reports, legal_holds)

ROUTES: list[Route] = [route for module in RESOURCES for route in module.ROUTES]
