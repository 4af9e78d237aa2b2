"""Roles and what they may do. API tokens can only narrow this, never widen it."""

from __future__ import annotations

ROLES = ("admin", "technician", "approver", "auditor")

PERMISSIONS = frozenset({
    "agents:read", "agents:write", "audit:read", "enroll:read", "enroll:write",
    "groups:read", "groups:write", "users:read", "users:write", "apitokens:write",
    # Approved fixes (issue 12): reading the catalogue, authoring a version, approving
    # one (never one's own: relay/fixes/service.py), running one in a session.
    "fixes:read", "fixes:author", "fixes:approve", "fixes:run",
    # Legal holds (relay/api/legal_holds.py): keep evidence from retention.
    "holds:write",
})

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": PERMISSIONS,
    "technician": frozenset({"agents:read", "agents:write", "enroll:read", "enroll:write",
                             "groups:read", "apitokens:write", "fixes:read", "fixes:author",
                             "fixes:run"}),
    "approver": frozenset({"agents:read", "groups:read", "apitokens:write", "fixes:read",
                           "fixes:approve"}),
    # Auditors read everything and change nothing: not even a legal hold, since one who
    # may place a hold may also lift it, and the next retention pass then deletes what it
    # kept. An auditor asks an admin (relay/api/legal_holds.py).
    "auditor": frozenset({"agents:read", "audit:read", "enroll:read", "groups:read",
                          "users:read", "fixes:read"}),
}

# What an API token may carry at most. Managing users, groups or other tokens is
# left to a person at the console, so a leaked token can never make itself root.
TOKEN_SCOPES = frozenset({"agents:read", "agents:write", "audit:read", "enroll:read",
                          "enroll:write", "groups:read", "users:read"})

# Roles that see every agent; the others see the groups they are granted.
SEES_ALL_AGENTS = frozenset({"admin", "auditor"})
