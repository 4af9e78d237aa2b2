"""Enrollment tokens (for agents) and API tokens (for automation).

Both are stored as an id plus a SHA-256 of a 256-bit secret. Checking a token
names exactly why it fails (unknown, forged, expired, used up, revoked, out of
scope, wrong address), so the audit trail and the caller can say so.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from backline.common import enrollment
from backline.relay.db import writing
from backline.relay.roles import TOKEN_SCOPES
from backline.relay.schema import api_tokens, enroll_tokens, groups

MAX_TTL_S = 90 * 24 * 3600
MAX_USES = 100_000
_TTL_RE = re.compile(r"^([0-9]{1,9})([smhd])$")  # ASCII: \d matches "٣" too
_API_TOKEN_RE = re.compile(r"^blt_([0-9a-f]{16})_([A-Za-z0-9_-]{20,64})$")


class TokenRefused(Exception):
    """A token that may not be used; ``reason`` is one short stable word."""

    def __init__(self, reason: str, message: str, token_id: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.token_id = token_id


def parse_ttl(text: str) -> int:
    """``90s``, ``30m``, ``1h``, ``7d`` -> seconds."""
    m = _TTL_RE.fullmatch(text.strip())
    if not m:
        raise ValueError("durations look like 30m, 1h or 7d")
    seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if not 0 < seconds <= MAX_TTL_S:
        raise ValueError("durations run from 1s to 90d")
    return seconds


# --- enrollment tokens -------------------------------------------------------------


def create_enroll_token(engine: sa.Engine, group_id: int, uses: int, ttl_s: int,
                        created_by: str) -> tuple[str, str]:
    """Return ``(token_id, secret)``; the secret is shown once and never stored."""
    if not 0 < uses <= MAX_USES:
        raise ValueError(f"uses must be between 1 and {MAX_USES}")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError("a token lives between 1 second and 90 days")
    token_id, secret = enrollment.new_secret()
    now = time.time()
    with writing(engine) as conn:
        conn.execute(enroll_tokens.insert().values(
            id=token_id, secret_hash=enrollment.hash_secret(secret), group_id=group_id,
            max_uses=uses, uses=0, expires_at=now + ttl_s, created_by=created_by[:128],
            created_at=now))
    return token_id, secret


def list_enroll_tokens(engine: sa.Engine) -> list[dict[str, Any]]:
    q = (sa.select(enroll_tokens, groups.c.name.label("group"))
         .join(groups, groups.c.id == enroll_tokens.c.group_id)
         .order_by(enroll_tokens.c.created_at.desc()))
    now = time.time()
    with engine.connect() as conn:
        rows = conn.execute(q).mappings().all()
    out = []
    for r in rows:
        state = ("revoked" if r["revoked_at"] else "expired" if r["expires_at"] <= now
                 else "used up" if r["uses"] >= r["max_uses"] else "active")
        out.append({"id": r["id"], "group": r["group"], "uses": r["uses"],
                    "max_uses": r["max_uses"], "expires_at": r["expires_at"],
                    "created_by": r["created_by"], "created_at": r["created_at"],
                    "revoked_at": r["revoked_at"], "state": state})
    return out


def enroll_token_group_id(engine: sa.Engine, token_id: str) -> int | None:
    """The group an enrollment token enrolls into, or ``None`` if there is no such token."""
    with engine.connect() as conn:
        return conn.execute(sa.select(enroll_tokens.c.group_id)
                            .where(enroll_tokens.c.id == token_id)).scalar()


def revoke_enroll_token(engine: sa.Engine, token_id: str) -> bool:
    with writing(engine) as conn:
        done = conn.execute(enroll_tokens.update().where(
            enroll_tokens.c.id == token_id, enroll_tokens.c.revoked_at.is_(None))
            .values(revoked_at=time.time()))
    return done.rowcount > 0


def redeem_enroll_token(conn: sa.Connection, secret: str) -> dict[str, Any]:
    """Use one enrollment of a token inside the caller's write transaction."""
    if not enrollment.secret_is_well_formed(secret):
        raise TokenRefused("malformed", "the enrollment token is malformed")
    token_id = secret.split(".", 1)[0]
    row = conn.execute(sa.select(enroll_tokens).where(enroll_tokens.c.id == token_id)
                       .with_for_update()).mappings().first()
    if row is None:
        raise TokenRefused("unknown", "the enrollment token is not known to this relay",
                           token_id)
    if not hmac.compare_digest(row["secret_hash"], enrollment.hash_secret(secret)):
        raise TokenRefused("forged", "the enrollment token's secret is wrong", token_id)
    if row["revoked_at"] is not None:
        raise TokenRefused("revoked", "the enrollment token was revoked", token_id)
    if row["expires_at"] <= time.time():
        raise TokenRefused("expired", "the enrollment token has expired", token_id)
    if row["uses"] >= row["max_uses"]:
        raise TokenRefused("used_up", "the enrollment token has been used up", token_id)
    conn.execute(enroll_tokens.update().where(enroll_tokens.c.id == token_id)
                 .values(uses=enroll_tokens.c.uses + 1))
    return dict(row)


# --- API tokens --------------------------------------------------------------------


@dataclass(frozen=True)
class ApiToken:
    id: str
    name: str
    user_id: int
    scopes: frozenset[str]
    allowed_cidrs: tuple[str, ...]
    expires_at: float


def normalise_cidrs(cidrs: list[str]) -> list[str]:
    out = []
    for c in cidrs:
        try:
            out.append(str(ipaddress.ip_network(c.strip(), strict=False)))
        except ValueError as exc:
            raise ValueError(f"{c!r} is not an address or network") from exc
    return out


def create_api_token(engine: sa.Engine, user_id: int, name: str, scopes: list[str],
                     ttl_s: int, allowed_cidrs: list[str]) -> tuple[str, str]:
    """Return ``(token_id, full_token)``; the token is shown once."""
    bad = set(scopes) - TOKEN_SCOPES
    if bad or not scopes:
        raise ValueError(f"scopes must be chosen from {', '.join(sorted(TOKEN_SCOPES))}"
                         + (f" (not {', '.join(sorted(bad))})" if bad else ""))
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError("an API token lives between 1 second and 90 days")
    if not name.strip() or len(name) > 128:
        raise ValueError("an API token needs a name of at most 128 characters")
    cidrs = normalise_cidrs(allowed_cidrs)
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    now = time.time()
    with writing(engine) as conn:
        conn.execute(api_tokens.insert().values(
            id=token_id, name=name.strip(), user_id=user_id,
            secret_hash=enrollment.hash_secret(secret), scopes=" ".join(sorted(set(scopes))),
            allowed_cidrs=" ".join(cidrs), expires_at=now + ttl_s, created_at=now))
    return token_id, f"blt_{token_id}_{secret}"


def check_api_token(engine: sa.Engine, presented: str, address: str) -> ApiToken:
    m = _API_TOKEN_RE.fullmatch(presented)
    if not m:
        raise TokenRefused("malformed", "the API token is malformed")
    token_id, secret = m.groups()
    with engine.connect() as conn:
        row = conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).first()
    if row is None:
        raise TokenRefused("unknown", "the API token is not known", token_id)
    if not hmac.compare_digest(row.secret_hash, enrollment.hash_secret(secret)):
        raise TokenRefused("forged", "the API token's secret is wrong", token_id)
    if row.revoked_at is not None:
        raise TokenRefused("revoked", "the API token was revoked", token_id)
    if row.expires_at <= time.time():
        raise TokenRefused("expired", "the API token has expired", token_id)
    cidrs = tuple(row.allowed_cidrs.split()) if row.allowed_cidrs else ()
    if cidrs and not address_in(address, cidrs):
        raise TokenRefused("address", f"the API token may not be used from {address}",
                           token_id)
    with writing(engine) as conn:
        conn.execute(api_tokens.update().where(api_tokens.c.id == token_id)
                     .values(last_used_at=time.time()))
    return ApiToken(id=token_id, name=row.name, user_id=row.user_id,
                    scopes=frozenset(row.scopes.split()), allowed_cidrs=cidrs,
                    expires_at=row.expires_at)


def address_in(address: str, cidrs: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(c) for c in cidrs)


def list_api_tokens(engine: sa.Engine, user_id: int | None = None) -> list[dict[str, Any]]:
    q = sa.select(api_tokens).order_by(api_tokens.c.created_at.desc())
    if user_id is not None:
        q = q.where(api_tokens.c.user_id == user_id)
    with engine.connect() as conn:
        rows = conn.execute(q).mappings().all()
    return [{"id": r["id"], "name": r["name"], "user_id": r["user_id"],
             "scopes": r["scopes"].split(), "allowed_cidrs": r["allowed_cidrs"].split(),
             "expires_at": r["expires_at"], "revoked_at": r["revoked_at"],
             "created_at": r["created_at"], "last_used_at": r["last_used_at"]} for r in rows]


def revoke_api_token(engine: sa.Engine, token_id: str, user_id: int | None = None) -> bool:
    q = api_tokens.update().where(api_tokens.c.id == token_id,
                                  api_tokens.c.revoked_at.is_(None))
    if user_id is not None:
        q = q.where(api_tokens.c.user_id == user_id)
    with writing(engine) as conn:
        return conn.execute(q.values(revoked_at=time.time())).rowcount > 0
