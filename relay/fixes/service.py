"""What the relay does with fixes, checked and audited: the one place for each step.

The REST API (relay/api/fixes.py), the CLI (relay/cli_fix.py) and the fix room
(relay/capabilities/fix.py) all come here, so four eyes, the digest in every audit
event and the refusals are the same whoever asks. A refusal is :class:`FixRefused`,
already audited when raised (``audited`` is then true): callers only say it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

from backline.common import protocol
from backline.common.fixes import revocation as fix_revocation
from backline.common.fixes import signing as fix_signing
from backline.common.fixes import trustdoc
from backline.common.fixes.manifest import FixManifest, ManifestError, canonical_bytes, digest
from backline.relay.fixes import signing, store, trust
from backline.relay.fixes.push import RevocationPush

if TYPE_CHECKING:
    from backline.relay.state import Relay

log = logging.getLogger("backline.relay.fixes")

#: How a revocation reason is cut in the signed list: at most this many bytes of its
#: canonical (ASCII-escaped JSON) form, so that even the fullest list agents accept
#: (``revocation.MAX_ENTRIES``) stays under ``revocation.MAX_FETCHED_LIST_BYTES``.
MAX_PUSHED_REASON = 200


def pushed_reason(reason: str) -> str:
    """``reason`` cut to :data:`MAX_PUSHED_REASON` escaped bytes (``é`` costs 6)."""
    size = 0
    for i, ch in enumerate(reason):
        size += len(json.dumps(ch)) - 2
        if size > MAX_PUSHED_REASON:
            return reason[:i]
    return reason


class FixRefused(Exception):
    """A step that cannot be taken: an HTTP status, a stable code, a sentence."""

    def __init__(self, status: int, code: str, detail: str, audited: bool = True) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.audited = status, code, detail, audited


def target(fix_id: str, version: int) -> str:
    return f"fix:{fix_id}@{version}"


class FixService:
    """The relay's fix catalogue and keys (``relay.fixes``)."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.push = RevocationPush()
        self._signed: tuple[int, dict[str, str], str] | None = None
        self._served: tuple[bytes, str] | None = None
        #: Bulk runs in progress (relay/fixes/bulk.py).
        self.tasks: set[asyncio.Future[Any]] = set()
        from backline.relay.fixes.self_service import SelfServiceReports

        #: Self-service runs the agents report (relay/fixes/self_service.py).
        self.self_service = SelfServiceReports(relay)

    # --- keys ----------------------------------------------------------------------

    @cached_property
    def key(self) -> signing.FixKey:
        """The online approval key; :class:`~.signing.FixKeyMissing` when the file is
        gone (only init and the relay's start make keys: a new one here would be a key
        no agent pins)."""
        return signing.load(self.relay.datadir.fix_key)

    def public_keys(self) -> list[str]:
        """What agents pin: ``fix_keys`` in ``enrolled`` and in the trust document (the
        same lines, normalised as the trust document writes them)."""
        return [fix_signing.pinned_key(self.key.public_line).line]

    def trust_document(self) -> dict[str, str]:
        return trustdoc.document(self.relay.audit.signing_key, trust.SERIAL,
                                 self.public_keys())

    @property
    def offline_keys(self) -> list[str]:
        return [k.strip() for k in self.relay.config.fix_offline_keys]

    # --- the catalogue ------------------------------------------------------------

    def submit(self, manifest: FixManifest, author: str, actor: str, source: str = "api",
               **where: Any) -> store.Version:
        try:
            v = store.submit(self.relay.engine, manifest, author)
        except store.Immutable as exc:
            self.relay.record(actor, "fix.submit.refused",
                              target(manifest.id, manifest.version), reason="immutable",
                              digest=digest(manifest), detail=str(exc)[:200], **where)
            raise FixRefused(409, "immutable", str(exc)) from None
        self.relay.record(actor, "fix.submitted", target(v.fix_id, v.version), digest=v.digest,
                          author=author, source=source, risk=manifest.risk, **where)
        return v

    def version(self, fix_id: str, version: int) -> store.Version:
        try:
            return store.get_version(self.relay.engine, fix_id, version)
        except store.NotFound:
            raise FixRefused(404, "not_found", f"no fix {fix_id}@{version}",
                             audited=False) from None

    def checked(self, v: store.Version) -> FixManifest:
        """The stored manifest, parsed, with the digest it was submitted under: what is
        signed is always what was submitted (a damaged row is never signed)."""
        try:
            m = v.parsed()
        except (ManifestError, KeyError, TypeError, ValueError) as exc:
            raise FixRefused(500, "damaged", f"{v.fix_id}@{v.version} no longer parses "
                                             f"({str(exc)[:120]})", audited=False) from None
        if digest(m) != v.digest:
            raise FixRefused(500, "damaged", f"{v.fix_id}@{v.version} no longer has the digest "
                                             "it was submitted under", audited=False)
        return m

    def approve(self, fix_id: str, version: int, approver: str, actor: str,
                seen_digest: str | None = None, **where: Any) -> store.Version:
        """Four eyes: the relay signs a version with its fix key for an approver who is
        not its author, and only the version the approver reviewed: ``seen_digest`` (the
        digest shown to them) must be the stored one (``digest_required`` without it,
        ``digest_mismatch`` when it differs: the row changed since, or another version
        was shown)."""
        v = self.version(fix_id, version)
        t = target(fix_id, version)

        def refuse(status: int, code: str, detail: str) -> FixRefused:
            self.relay.record(actor, "fix.approve.refused", t, reason=code, digest=v.digest,
                              approver=approver, author=v.author, detail=detail[:200], **where)
            return FixRefused(status, code, detail)

        if approver == v.author:
            raise refuse(403, "self_approval", "the author of a version cannot approve it; "
                                               "another approver must")
        if not seen_digest:
            raise refuse(400, "digest_required", "say which version you reviewed: "
                                                 '{"digest": "sha256:..."} as shown')
        if seen_digest != v.digest:
            raise refuse(409, "digest_mismatch", f"{fix_id}@{version} has digest {v.digest}, "
                                                 f"not the {seen_digest[:80]} reviewed")
        if store.revocation_of(self.relay.engine, fix_id, version) is not None:
            raise refuse(409, "revoked", f"{fix_id}@{version} is revoked")
        try:
            m = self.checked(v)
        except FixRefused as exc:
            raise refuse(exc.status, exc.code, exc.detail) from None
        signature = self.key.sign(canonical_bytes(m))
        if not store.add_signature(self.relay.engine, v, "relay", approver,
                                   self.key.fingerprint, signature):
            raise refuse(409, "already_approved", f"{fix_id}@{version} is approved already")
        self.relay.record(actor, "fix.approved", t, digest=v.digest, approver=approver,
                          author=v.author, key=self.key.fingerprint, **where)
        return v

    def add_signature(self, fix_id: str, version: int, armored: str, by: str, actor: str,
                      **where: Any) -> str:
        """An offline approver's signature, accepted only from ``fix_offline_keys``;
        the signer's fingerprint."""
        v = self.version(fix_id, version)
        t = target(fix_id, version)

        def refuse(status: int, code: str, detail: str) -> FixRefused:
            self.relay.record(actor, "fix.signature.refused", t, reason=code, digest=v.digest,
                              detail=detail[:200], **where)
            return FixRefused(status, code, detail)

        try:
            m = self.checked(v)
        except FixRefused as exc:
            raise refuse(exc.status, exc.code, exc.detail) from None
        if not self.offline_keys:
            raise refuse(409, "no_offline_keys", "the relay has no offline approver keys "
                                                 "(config fix_offline_keys)")
        try:
            signer = fix_signing.signer_of(canonical_bytes(m), armored, self.offline_keys)
        except (ValueError, TypeError) as exc:
            raise refuse(400, "bad_signature", f"not an SSH signature ({str(exc)[:100]})"
                         ) from None
        if signer is None:
            raise refuse(400, "bad_signature", "the signature is not by a configured offline "
                                               "key over this version's canonical bytes")
        if not store.add_signature(self.relay.engine, v, "offline", by, signer, armored):
            raise refuse(409, "already_signed", f"{signer} signed {fix_id}@{version} already")
        self.relay.record(actor, "fix.signature.added", t, digest=v.digest, key=signer,
                          kind="offline", **where)
        return signer

    def revoke(self, fix_id: str, version: int, reason: str, by: str, actor: str,
               **where: Any) -> int:
        v = self.version(fix_id, version)
        try:
            serial = store.revoke(self.relay.engine, v, reason, by)
        except store.TooMany as exc:
            self.relay.record(actor, "fix.revoke.refused", target(fix_id, version),
                              reason="too_many", digest=v.digest, detail=str(exc)[:200],
                              **where)
            raise FixRefused(409, "too_many", str(exc)) from None
        if serial is None:
            self.relay.record(actor, "fix.revoke.refused", target(fix_id, version),
                              reason="already_revoked", digest=v.digest,
                              detail="revoked already", **where)
            raise FixRefused(409, "already_revoked", f"{fix_id}@{version} is revoked already")
        sent = self.broadcast_revocations()
        self.relay.record(actor, "fix.revoked", target(fix_id, version), digest=v.digest,
                          serial=serial, why=reason[:512], agents_sent=sent,
                          delivery=self.revocation_delivery(), **where)
        return serial

    def signatures_for(self, v: store.Version) -> list[str]:
        """The signatures sent with ``v``: those recorded for its digest (a row made for
        another digest, or emptied, is not sent; the agent then says what is missing)."""
        return [s["signature"] for s in store.signatures_of(self.relay.engine, v.fix_id,
                                                             v.version)
                if s["digest"] == v.digest and s["signature"].strip()]

    # --- revocations ------------------------------------------------------------

    def revocation_list(self) -> tuple[fix_revocation.RevocationList, str] | None:
        """The whole list, signed by the fix key; None when nothing is revoked."""
        rows = store.revocations(self.relay.engine)
        if not rows:
            return None
        listed = fix_revocation.make(rows[-1]["serial"], [fix_revocation.entry(
            r["fix_id"], r["version"], r["digest"], pushed_reason(r["reason"]),
            float(r["at"])) for r in rows])
        return listed, self.key.sign_revocations(listed)

    def signed_revocations(self) -> tuple[int, dict[str, str], str] | None:
        """(serial, the signed list as :func:`~revocation.encode_message` makes it, the
        control message), signed once per serial (agents reconnecting by the thousand
        cost a ``max(serial)`` each, not a signature each); None when nothing is revoked.

        The control message carries the list when it fits one frame; otherwise it is the
        announcement (empty ``list_b64`` and ``signature``) and agents fetch the body
        from ``GET /agent/fix-revocations`` (:func:`.push.revocations_endpoint`). A list
        is never dropped for its size: at ``revocation.MAX_ENTRIES`` entries with
        reasons cut to ``MAX_PUSHED_REASON`` it is under 4 MB, below
        ``MAX_FETCHED_LIST_BYTES`` (a test measures it), and the store refuses more."""
        serial = store.revocation_serial(self.relay.engine)
        if serial == 0:
            return None
        if self._signed is not None and self._signed[0] == serial:
            return self._signed
        signed = self.revocation_list()
        if signed is None:
            return None
        body = fix_revocation.encode_message(*signed)
        # What GET /agent/fix-revocations answers, encoded once per serial (up to a few
        # MB: never again per request), and its SHA-256 (the ETag; in the announcement).
        data = json.dumps(body, separators=(",", ":")).encode()
        sha = hashlib.sha256(data).hexdigest()
        if len(body["list_b64"]) <= protocol.MAX_REVOCATIONS_B64:
            message = protocol.encode("fix_revocations", list_b64=body["list_b64"],
                                      signature=body["signature"])
        else:  # the announcement names what it announces: an agent that has it skips
            message = protocol.encode("fix_revocations", **{
                k: v for k, v in fix_revocation.announcement().items() if k != "type"},
                serial=signed[0].serial, sha256=sha)
        self._served = (data, sha)
        self._signed = (signed[0].serial, body, message)
        return self._signed

    def served_revocations(self) -> tuple[bytes, str] | None:
        """(the JSON body of ``GET /agent/fix-revocations``, its SHA-256 hex), made once
        per serial with :meth:`signed_revocations`; None when nothing is revoked."""
        if self.signed_revocations() is None:
            return None
        return self._served

    def revocation_message(self) -> str | None:
        """The control message for agents (the list, or its announcement)."""
        signed = self.signed_revocations()
        return None if signed is None else signed[2]

    def revocation_delivery(self) -> str:
        """``control`` (the list rides in the message) or ``fetch`` (announced)."""
        signed = self.signed_revocations()
        if signed is None:
            return "none"
        return "control" if len(signed[1]["list_b64"]) <= protocol.MAX_REVOCATIONS_B64 \
            else "fetch"

    def broadcast_revocations(self) -> int:
        message = self.revocation_message()
        return 0 if message is None else self.push.broadcast(message)

    async def agent_connected(self, agent_id: str, version: str, send: Any) -> None:
        """After ``welcome``: remember an agent that can take revocations, and send it
        the list."""
        if self.push.connected(agent_id, version, send):
            try:
                message = self.revocation_message()
            except Exception:  # the agent's connection matters more: it is sent next time
                log.exception("the revocation list could not be made for %s", agent_id)
                return
            if message is not None:
                await send(message)

    def now(self) -> float:
        return time.time()
