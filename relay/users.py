"""People: users with roles, their passwords and TOTP, groups and grants.

Passwords are argon2id hashes. There is no web path that creates the first admin:
it comes from ``backline-relay init`` (a one-time password) or ``user create``.
"""

from __future__ import annotations

import functools
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import pyotp
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from backline.relay.db import writing
from backline.relay.roles import ROLES, SEES_ALL_AGENTS
from backline.relay.schema import grants, groups, users

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")
MIN_PASSWORD = 12

_hasher = PasswordHasher()  # argon2id with the library's current recommended costs


@functools.cache
def _dummy_hash() -> str:
    """What an unknown username's password is checked against, so that "no such user"
    costs the same argon2 work as a wrong password. Made on first use, not at import:
    every ``backline-relay`` command imports this module, and one argon2 hash is a
    quarter of a second of CPU."""
    return _hasher.hash(secrets.token_urlsafe(16))


class UserError(ValueError):
    """A request about users or groups that cannot be done; the message says why."""


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    must_change_password: bool
    totp_enabled: bool
    totp_required: bool
    disabled: bool
    #: Increased by a password change or reset and by disabling the user (device
    #: cookies are bound to it).
    credential_epoch: int = 0
    #: When the account was created: with the id, what tells a username deleted and
    #: created again apart (SQLite may give the new row the old row's id).
    created_at: float = 0.0

    @property
    def sees_all_agents(self) -> bool:
        return self.role in SEES_ALL_AGENTS

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "role": self.role,
                "must_change_password": self.must_change_password,
                "totp_enabled": self.totp_enabled, "totp_required": self.totp_required,
                "disabled": self.disabled}


def _user(row: Any) -> User:
    return User(id=row.id, username=row.username, role=row.role,
                must_change_password=bool(row.must_change_password),
                totp_enabled=bool(row.totp_secret), totp_required=bool(row.totp_required),
                disabled=bool(row.disabled), credential_epoch=int(row.credential_epoch or 0),
                created_at=float(row.created_at))


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"passwords need at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise UserError("passwords are at most 1024 characters")


def create_user(engine: sa.Engine, username: str, role: str, password: str,
                must_change_password: bool = False) -> User:
    if not USERNAME_RE.fullmatch(username):
        raise UserError("usernames are 1-64 lowercase letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    check_password_policy(password)
    with writing(engine) as conn:
        if conn.execute(sa.select(users.c.id).where(users.c.username == username)).first():
            raise UserError(f"user {username!r} already exists")
        conn.execute(users.insert().values(
            username=username, role=role, password_hash=_hasher.hash(password),
            must_change_password=must_change_password, totp_required=False,
            disabled=False, created_at=time.time()))
    user = get_user(engine, username=username)
    assert user is not None
    return user


def get_user(engine: sa.Engine, *, username: str | None = None,
             user_id: int | None = None) -> User | None:
    q = sa.select(users)
    q = q.where(users.c.username == username) if username is not None else q.where(
        users.c.id == user_id)
    with engine.connect() as conn:
        row = conn.execute(q).first()
    return _user(row) if row else None


def list_users(engine: sa.Engine) -> list[User]:
    with engine.connect() as conn:
        return [_user(r) for r in conn.execute(sa.select(users).order_by(users.c.username))]


def count_users(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(users)).scalar() or 0)


def update_user(engine: sa.Engine, user_id: int, **changes: Any) -> User:
    allowed = {"role", "disabled", "totp_required"}
    if set(changes) - allowed:
        raise UserError(f"only {', '.join(sorted(allowed))} can be changed here")
    if "role" in changes and changes["role"] not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    values = dict(changes)
    if changes.get("disabled"):  # the user's device cookies stop counting
        values["credential_epoch"] = users.c.credential_epoch + 1
    with writing(engine) as conn:
        done = conn.execute(users.update().where(users.c.id == user_id).values(**values))
        if done.rowcount == 0:
            raise UserError("no such user")
    user = get_user(engine, user_id=user_id)
    assert user is not None
    return user


def verify_password(engine: sa.Engine, username: str, password: str) -> User | None:
    """The user if the password is right. Unknown users cost the same time as known ones."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(users).where(users.c.username == username)).first()
    stored = row.password_hash if row else _dummy_hash()
    try:
        _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row is None or row.disabled:
        return None
    if _hasher.check_needs_rehash(stored):
        with writing(engine) as conn:
            conn.execute(users.update().where(users.c.id == row.id)
                         .values(password_hash=_hasher.hash(password)))
    return _user(row)


def set_password(engine: sa.Engine, user_id: int, password: str,
                 must_change: bool = False) -> None:
    """Replace the password (a change or a reset). The credential epoch goes up with
    it: device cookies issued for the old password no longer give a sign-in lane of
    their own (the old password may be what leaked)."""
    check_password_policy(password)
    with writing(engine) as conn:
        conn.execute(users.update().where(users.c.id == user_id).values(
            password_hash=_hasher.hash(password), must_change_password=must_change,
            credential_epoch=users.c.credential_epoch + 1))


# --- TOTP --------------------------------------------------------------------------


def begin_totp(engine: sa.Engine, user: User) -> str:
    """Start TOTP enrolment: a fresh secret that counts only once confirmed."""
    secret = pyotp.random_base32()
    with writing(engine) as conn:
        conn.execute(users.update().where(users.c.id == user.id).values(totp_pending=secret))
    return secret


def totp_uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name="Backline")


#: What a TOTP code is: exactly six ASCII digits. ``str.isdigit`` also accepts other
#: scripts' digits ('١٢٣٤٥٦'), which ``hmac.compare_digest`` then refuses with a
#: TypeError: a 500 for a right password and a 401 for a wrong one.
TOTP_CODE_RE = re.compile(r"[0-9]{6}")


def confirm_totp(engine: sa.Engine, user: User, code: str) -> bool:
    """Activate the pending secret if ``code`` is one of its current codes. The code
    is spent at once: its step becomes the user's last accepted one."""
    with engine.connect() as conn:
        pending = conn.execute(sa.select(users.c.totp_pending)
                               .where(users.c.id == user.id)).scalar()
    step = _matching_step(pending, code, time.time()) if pending else None
    if step is None:
        return False
    with writing(engine) as conn:
        done = conn.execute(users.update().where(
            users.c.id == user.id, users.c.totp_pending == pending
        ).values(totp_secret=pending, totp_pending=None, totp_last_step=step))
    return bool(done.rowcount == 1)


def _matching_step(secret: str, code: str, now: float) -> int | None:
    if not TOTP_CODE_RE.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for offset in (0, -1, 1):  # one step of clock drift either way
        # As bytes: compare_digest raises TypeError on non-ASCII str ('١٢٣٤٥٦' passes
        # str.isdigit), which answered 500 only when the password was right.
        if hmac.compare_digest(totp.at(now, counter_offset=offset).encode(),
                               code.encode("utf-8", "replace")):
            return int(current + offset)
    return None


def check_totp(engine: sa.Engine, user: User, code: str) -> bool:
    """Whether ``code`` is a current code of ``user``'s authenticator never accepted
    before. A code is accepted once: the step it belongs to is stored with the user
    and taken by one conditional UPDATE (``WHERE totp_last_step < step``), so neither
    a restart nor two requests racing each other (nor two relay nodes) can reuse it."""
    with engine.connect() as conn:
        secret = conn.execute(sa.select(users.c.totp_secret)
                              .where(users.c.id == user.id)).scalar()
    step = _matching_step(secret, code, time.time()) if secret else None
    if step is None:
        return False
    with writing(engine) as conn:
        done = conn.execute(users.update().where(
            users.c.id == user.id, users.c.totp_secret == secret,
            sa.or_(users.c.totp_last_step.is_(None), users.c.totp_last_step < step)
        ).values(totp_last_step=step))
    return bool(done.rowcount == 1)


# --- groups and grants -------------------------------------------------------------


def create_group(engine: sa.Engine, name: str, description: str = "") -> int:
    if not GROUP_RE.fullmatch(name):
        raise UserError("group names are 1-128 letters, digits, spaces, '.', '_' or '-'")
    with writing(engine) as conn:
        if conn.execute(sa.select(groups.c.id).where(groups.c.name == name)).first():
            raise UserError(f"group {name!r} already exists")
        result = conn.execute(groups.insert().values(
            name=name, description=description[:512], created_at=time.time()))
        return int(result.inserted_primary_key[0])


def group_id(engine: sa.Engine, name: str, create: bool = False) -> int | None:
    with engine.connect() as conn:
        gid = conn.execute(sa.select(groups.c.id).where(groups.c.name == name)).scalar()
    if gid is None and create:
        return create_group(engine, name)
    return gid


def list_groups(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(groups).order_by(groups.c.name)).mappings().all()
        members = conn.execute(
            sa.select(grants.c.group_id, users.c.username)
            .join(users, users.c.id == grants.c.user_id)).all()
    by_group: dict[int, list[str]] = {}
    for gid, username in members:
        by_group.setdefault(gid, []).append(username)
    return [{"id": r["id"], "name": r["name"], "description": r["description"],
             "granted": sorted(by_group.get(r["id"], []))} for r in rows]


def grant(engine: sa.Engine, user_id: int, gid: int, allow: bool = True) -> None:
    with writing(engine) as conn:
        conn.execute(grants.delete().where(grants.c.user_id == user_id,
                                           grants.c.group_id == gid))
        if allow:
            conn.execute(grants.insert().values(user_id=user_id, group_id=gid))


def granted_group_ids(engine: sa.Engine, user: User) -> set[int] | None:
    """The groups ``user`` may act on; ``None`` means all of them."""
    if user.sees_all_agents:
        return None
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(
            sa.select(grants.c.group_id).where(grants.c.user_id == user.id))}
