"""The fixes API: the catalogue, four-eyes approval, signatures, revocation, runs, bulk.

Who may do what (relay/roles.py): ``fixes:read`` sees the catalogue and the runs of
agents one may see; ``fixes:author`` submits versions; ``fixes:approve`` approves one
(never one's own: ``403 self_approval``, audited) and adds offline signatures;
revoking needs ``fixes:approve`` too (whoever may say a version is fit may say it is
not). Running one is done in a session (``POST /sessions/{id}/channels/fix``, the
``/stream/fix`` socket: ``agents:write`` and ``fixes:run``) or over a group
(``/bulk``: ``fixes:run``, ``agents:write`` and a grant on the group). Each step is
checked and audited in :mod:`backline.relay.fixes.service`; this module parses and
bounds what comes in and shapes what goes out (docs/fixes-relay.md).
"""

from __future__ import annotations

import difflib
import json
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backline.common.fixes.manifest import ManifestError, manifest_from_dict, parse_manifest
from backline.common.fixes.params import ParamError, validate_params
from backline.relay import agents, timeline, users
from backline.relay.api import evidence
from backline.relay.api.agents import agent_by_id, visible_group_ids
from backline.relay.api.edge import Body, Params, Reply, endpoint, reply, whole
from backline.relay.api.models import FixParams, OpaqueId
from backline.relay.api.sessions import may_see
from backline.relay.fixes import bulk, store
from backline.relay.fixes.service import FixRefused
from backline.relay.retention import gone_text
from backline.relay.state import Relay
from backline.relay.webauth import ApiError, Principal

#: A manifest with its scripts (256 KiB each, as TOML or JSON, escaped): the one body
#: larger than the API's 64 KiB.
MAX_MANIFEST_BODY = 1024 * 1024
FIX_ID = r"^[a-z][a-z0-9-]{1,47}$"
RULE = r"^[a-z0-9][a-z0-9._-]{0,79}$"
FixId = Annotated[str, Field(pattern=FIX_ID, max_length=48)]
Version = whole(1, 2**31 - 1, "a version number")


# --- models -------------------------------------------------------------------------


class FixPath(Params):
    fix_id: FixId


class FixVersionPath(Params):
    fix_id: FixId
    version: Version


class RunPath(Params):
    run_id: OpaqueId


class BulkPath(Params):
    bulk_id: OpaqueId


class DiffQuery(Params):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    from_: Version = Field(alias="from")
    to: Version


class SuggestedQuery(Params):
    rules: Annotated[str, Field(max_length=2048, description="rule ids, comma-separated "
                                                             "(at most 32)")] = ""


class RunQuery(Params):
    session: Annotated[str, Field(max_length=64)] = ""
    agent: Annotated[str, Field(max_length=64)] = ""
    fix: Annotated[str, Field(max_length=48)] = ""
    limit: whole(1, 500, "at most 500") = 100


class Submit(Body):
    manifest_toml: Annotated[str, Field(max_length=MAX_MANIFEST_BODY)] | None = None
    manifest: dict[str, Any] | None = None


class SignatureBody(Body):
    signature: Annotated[str, Field(min_length=1, max_length=8192)]


class ApproveBody(Body):
    #: The digest the approver reviewed (GET /fixes/{id}/{version}); required.
    digest: Annotated[str, Field(max_length=80)] | None = None


class RevokeBody(Body):
    reason: Annotated[str, Field(min_length=1, max_length=512)]


class BulkBody(Body):
    group: Annotated[str, Field(min_length=1, max_length=128)]
    params: FixParams = {}
    concurrency: Annotated[int, Field(ge=1, le=bulk.MAX_CONCURRENCY)] = 4


class Latest(Reply):
    version: int
    status: Literal["submitted", "approved", "revoked"]
    digest: str


class FixSummary(Reply):
    id: str
    title: str
    risk: str
    platforms: list[str]
    rules: list[str]
    latest: Latest


class FixList(Reply):
    fixes: list[FixSummary]


class Submitted(Reply):
    id: str
    version: int
    digest: str
    status: Literal["submitted"]


class Approval(Reply):
    approver: str
    at: float
    key: str
    kind: Literal["relay", "offline"]


class VersionSummary(Reply):
    version: int
    digest: str
    status: Literal["submitted", "approved", "revoked"]
    author: str
    submitted_at: float
    approvals: list[Approval]


class FixVersions(Reply):
    id: str
    versions: list[VersionSummary]


class Revocation(Reply):
    reason: str
    at: float
    by: str


class FixVersion(Reply):
    manifest: dict[str, Any] = Field(description="FixManifest.as_dict(), scripts included")
    digest: str
    status: Literal["submitted", "approved", "revoked"]
    author: str
    submitted_at: float
    approvals: list[Approval]
    signatures: list[str]
    revoked: Revocation | None


class Status(Reply):
    status: Literal["approved", "revoked"]
    serial: int | None = None


class SignatureAdded(Reply):
    key: str
    kind: Literal["offline"]


class Diff(Reply):
    diff: str


class RunRecord(Reply):
    model_config = ConfigDict(extra="allow")

    id: str
    fix_id: str
    version: int
    digest: str
    session_id: str
    agent_id: str
    technician: str
    status: str
    started_at: float
    output: str = Field(description="where the kept output is served")


class Runs(Reply):
    runs: list[RunRecord]


class BulkStarted(Reply):
    bulk_id: str


class BulkResult(Reply):
    agent_id: str
    hostname: str
    status: str
    exit_status: int | None
    verify_passed: bool | None
    run_id: str | None
    error: str | None


class BulkStatus(Reply):
    id: str
    fix: str
    digest: str
    group: str
    status: str
    total: int
    done: int
    results: list[BulkResult]


# --- helpers ------------------------------------------------------------------------


def _where(request: Request, who: Principal) -> dict[str, str]:
    return {"address": who.address, "method": request.method}


def _refused(exc: FixRefused) -> ApiError:
    return ApiError(exc.status, exc.code, exc.detail, audited=exc.audited)


def _approvals(engine: Any, fix_id: str, version: int) -> list[dict[str, Any]]:
    return [{"approver": s["approver"], "at": s["at"], "key": s["key"], "kind": s["kind"]}
            for s in store.signatures_of(engine, fix_id, version)]


def _version(relay: Relay, fix_id: str, version: int) -> store.Version:
    try:
        return relay.fixes.version(fix_id, version)
    except FixRefused as exc:
        raise _refused(exc) from None


def _run_visible(relay: Relay, who: Principal, run: dict[str, Any]) -> None:
    """A run is seen by whoever may see its agent; a run in an attended session (no
    enrolled agent) by whoever may see that session."""
    if run["agent_id"].startswith("at_"):
        session = relay.sessions.row(run["session_id"])
        if session is None or not may_see(relay, who, session):
            raise ApiError(404, "not_found", "no such run")
        return
    agent_by_id(relay, who, run["agent_id"], acting=False)


def _run_out(run: dict[str, Any]) -> dict[str, Any]:
    out = dict(run)
    out["params"] = json.loads(run["params"] or "{}")
    out["output"] = f"/api/v1/fix-runs/{run['id']}/output"
    return out


# --- the catalogue ----------------------------------------------------------------------


@endpoint("fixes:read", answers={200: FixList})
async def list_fixes(request: Request, relay: Relay, who: Principal) -> Response:
    """Every fix, with its newest version's status and digest."""
    fixes = []
    for v in store.all_latest(relay.engine):
        m = v.manifest
        fixes.append({"id": v.fix_id, "title": m.get("title", ""), "risk": m.get("risk", ""),
                      "platforms": m.get("platforms", []), "rules": m.get("rules", []),
                      "latest": {"version": v.version, "digest": v.digest,
                                 "status": store.status_of(relay.engine, v.fix_id,
                                                           v.version)}})
    return reply(FixList, {"fixes": fixes})


@endpoint("fixes:author", body=Submit, answers={201: Submitted}, refuses=(409,),
          max_body=MAX_MANIFEST_BODY)
async def submit_fix(request: Request, relay: Relay, who: Principal, *,
                     body: Submit) -> Response:
    """Submit a new version: ``{"manifest_toml": "..."}`` (scripts inline) or
    ``{"manifest": {...}}`` (FixManifest.as_dict()). A version never changes: an
    existing ``(id, version)`` is ``409 immutable``."""
    where = _where(request, who)
    if (body.manifest_toml is None) == (body.manifest is None):
        raise ApiError(400, "bad_field", "give exactly one of manifest_toml and manifest",
                       action="fix.submit.refused")
    try:
        manifest = (parse_manifest(body.manifest_toml) if body.manifest_toml is not None
                    else manifest_from_dict(body.manifest or {}))
    except ManifestError as exc:
        raise ApiError(400, "bad_manifest", str(exc)[:300], action="fix.submit.refused"
                       ) from None
    try:
        v = relay.fixes.submit(manifest, who.user.username, who.actor, "api", **where)
    except FixRefused as exc:
        raise _refused(exc) from None
    return reply(Submitted, {"id": v.fix_id, "version": v.version, "digest": v.digest,
                             "status": "submitted"}, status=201)


@endpoint("fixes:read", query=SuggestedQuery, answers={200: FixList})
async def suggested_fixes(request: Request, relay: Relay, who: Principal, *,
                          query: SuggestedQuery) -> Response:
    """Approved, not revoked versions (the newest of each fix) that address any of
    ``?rules=r1,r2``: the "suggested fixes" of a finding."""
    import re

    wanted = [r for r in query.rules.split(",") if r][:32]
    if not all(re.fullmatch(RULE, r) for r in wanted):
        raise ApiError(400, "bad_field", "rules is a comma-separated list of rule ids")
    found: dict[str, dict[str, Any]] = {}
    for fix_id in sorted({v.fix_id for v in store.all_latest(relay.engine)}):
        for v in reversed(store.versions_of(relay.engine, fix_id)):
            if store.status_of(relay.engine, fix_id, v.version) != "approved":
                continue
            m = v.manifest  # the newest approved version of this fix
            if set(wanted) & set(m.get("rules", [])):
                found[fix_id] = {"id": fix_id, "title": m.get("title", ""),
                                 "risk": m.get("risk", ""),
                                 "platforms": m.get("platforms", []),
                                 "rules": m.get("rules", []),
                                 "latest": {"version": v.version, "digest": v.digest,
                                            "status": "approved"}}
            break
    return reply(FixList, {"fixes": list(found.values())})


@endpoint("fixes:read", path=FixPath, noun="fix", answers={200: FixVersions})
async def get_fix(request: Request, relay: Relay, who: Principal, *,
                  path: FixPath) -> Response:
    """Every version of one fix, oldest first, with status, author and approvals."""
    versions = store.versions_of(relay.engine, path.fix_id)
    if not versions:
        raise ApiError(404, "not_found", "no such fix")
    return reply(FixVersions, {"id": path.fix_id, "versions": [
        {"version": v.version, "digest": v.digest, "author": v.author,
         "submitted_at": v.submitted_at,
         "status": store.status_of(relay.engine, v.fix_id, v.version),
         "approvals": _approvals(relay.engine, v.fix_id, v.version)} for v in versions]})


@endpoint("fixes:read", path=FixPath, noun="fix", query=DiffQuery, answers={200: Diff})
async def diff_fix(request: Request, relay: Relay, who: Principal, *,
                   path: FixPath, query: DiffQuery) -> Response:
    """A unified diff of two versions' manifests and scripts (``?from=V1&to=V2``)."""
    a = _version(relay, path.fix_id, query.from_)
    b = _version(relay, path.fix_id, query.to)
    return reply(Diff, {"diff": diff_text(a, b)})


def diff_text(a: store.Version, b: store.Version) -> str:
    """What changed from ``a`` to ``b``: the manifest's fields, then each script."""
    def parts(v: store.Version) -> dict[str, str]:
        m = dict(v.manifest)
        scripts = {k: m.pop(k) or "" for k in ("script", "verify") if k in m}
        out = {"manifest": json.dumps(m, indent=2, sort_keys=True, ensure_ascii=False) + "\n"}
        out.update({k: str(t) for k, t in scripts.items()})
        return out

    pa, pb = parts(a), parts(b)
    lines: list[str] = []
    for name in ("manifest", "script", "verify"):
        lines += difflib.unified_diff(
            pa.get(name, "").splitlines(keepends=True), pb.get(name, "").splitlines(
                keepends=True), f"{a.fix_id}@{a.version}/{name}", f"{b.fix_id}@{b.version}/{name}")
    return "".join(x if x.endswith("\n") else x + "\n" for x in lines)


@endpoint("fixes:read", path=FixVersionPath, noun="fix version", answers={200: FixVersion})
async def get_fix_version(request: Request, relay: Relay, who: Principal, *,
                          path: FixVersionPath) -> Response:
    """One version exactly as stored (scripts included), its approvals, signatures and
    revocation."""
    v = _version(relay, path.fix_id, path.version)
    revoked = store.revocation_of(relay.engine, v.fix_id, v.version)
    return reply(FixVersion, {
        "manifest": v.manifest, "digest": v.digest, "author": v.author,
        "submitted_at": v.submitted_at,
        "status": store.status_of(relay.engine, v.fix_id, v.version),
        "approvals": _approvals(relay.engine, v.fix_id, v.version),
        "signatures": relay.fixes.signatures_for(v),
        "revoked": None if revoked is None else {"reason": revoked["reason"],
                                                 "at": revoked["at"],
                                                 "by": revoked["revoked_by"]}})


@endpoint("fixes:approve", path=FixVersionPath, noun="fix version", body=ApproveBody,
          answers={200: Status}, refuses=(409,))
async def approve_fix(request: Request, relay: Relay, who: Principal, *,
                      path: FixVersionPath, body: ApproveBody) -> Response:
    """Approve the version the approver reviewed: ``{"digest": ...}`` as shown by
    ``GET /fixes/{id}/{version}`` (``400 digest_required`` without it, ``409
    digest_mismatch`` when the stored version has another). The relay signs its
    canonical bytes with its fix key. The author of the version cannot (``403
    self_approval``). Every refusal is audited (``fix.approve.refused``)."""
    try:
        relay.fixes.approve(path.fix_id, path.version, who.user.username, who.actor,
                            body.digest, **_where(request, who))
    except FixRefused as exc:
        raise _refused(exc) from None
    return reply(Status, {"status": "approved"})


@endpoint("fixes:approve", path=FixVersionPath, noun="fix version", body=SignatureBody,
          answers={201: SignatureAdded}, refuses=(409,))
async def add_signature(request: Request, relay: Relay, who: Principal, *,
                        path: FixVersionPath, body: SignatureBody) -> Response:
    """Add an offline approver's SSH signature (``backline-relay fix sign`` or
    ``ssh-keygen -Y sign -n backline-fix`` over the canonical bytes), accepted only from
    the keys in config ``fix_offline_keys``."""
    try:
        key = relay.fixes.add_signature(path.fix_id, path.version, body.signature,
                                        who.user.username, who.actor, **_where(request, who))
    except FixRefused as exc:
        raise _refused(exc) from None
    return reply(SignatureAdded, {"key": key, "kind": "offline"}, status=201)


@endpoint("fixes:approve", path=FixVersionPath, noun="fix version", body=RevokeBody,
          answers={200: Status}, refuses=(409,))
async def revoke_fix(request: Request, relay: Relay, who: Principal, *,
                     path: FixVersionPath, body: RevokeBody) -> Response:
    """Revoke a version (never lifted); the signed list goes to the agents at once."""
    if any(not ch.isprintable() for ch in body.reason):
        raise ApiError(400, "bad_field", "reason must be printable text on one line",
                       action="fix.revoke.refused")
    try:
        serial = relay.fixes.revoke(path.fix_id, path.version, body.reason.strip(),
                                    who.user.username, who.actor, **_where(request, who))
    except FixRefused as exc:
        raise _refused(exc) from None
    return reply(Status, {"status": "revoked", "serial": serial})


# --- bulk ----------------------------------------------------------------------------


@endpoint("fixes:run", path=FixVersionPath, noun="fix version", body=BulkBody,
          answers={202: BulkStarted}, refuses=(409,))
async def start_bulk(request: Request, relay: Relay, who: Principal, *,
                     path: FixVersionPath, body: BulkBody) -> Response:
    """Run an approved version on every online agent of a group (``concurrency`` at a
    time): one run, one audit trail and one result per agent."""
    if not who.can("agents:write"):
        raise ApiError(403, "forbidden", "agents:write is needed as well")
    v = _version(relay, path.fix_id, path.version)
    status = store.status_of(relay.engine, v.fix_id, v.version)
    if status != "approved":
        raise ApiError(409, "revoked" if status == "revoked" else "not_approved",
                       f"{v.fix_id}@{v.version} is {status}", action="fix.run.refused",
                       target=f"fix:{v.fix_id}@{v.version}", side="relay", digest=v.digest)
    try:
        validate_params(v.parsed(), dict(body.params))
    except ParamError as exc:
        raise ApiError(400, "params", str(exc)[:300], action="fix.run.refused",
                       target=f"fix:{v.fix_id}@{v.version}", side="relay",
                       digest=v.digest) from None
    except (ManifestError, KeyError, TypeError, ValueError):
        raise ApiError(500, "damaged", "the stored version no longer parses") from None
    gid = users.group_id(relay.engine, body.group)
    allowed = visible_group_ids(relay, who)
    if gid is None or (allowed is not None and gid not in allowed):
        raise ApiError(404, "not_found", "no such group, or not one you are granted")
    bulk_id = bulk.start(relay, v, body.group, gid, dict(body.params), body.concurrency,
                         who.user.username, who.actor, who.address)
    return reply(BulkStarted, {"bulk_id": bulk_id}, status=202)


@endpoint("fixes:read", path=BulkPath, noun="bulk run", answers={200: BulkStatus})
async def get_bulk(request: Request, relay: Relay, who: Principal, *,
                   path: BulkPath) -> Response:
    """A bulk run's progress and its results table (one row per agent)."""
    found = store.get_bulk(relay.engine, path.bulk_id)
    if found is None:
        raise ApiError(404, "not_found", "no such bulk run")
    gid = users.group_id(relay.engine, found["group_name"])
    allowed = visible_group_ids(relay, who)
    if allowed is not None and gid not in allowed:
        raise ApiError(404, "not_found", "no such bulk run")
    return reply(BulkStatus, {
        "id": found["id"], "fix": f"{found['fix_id']}@{found['version']}",
        "digest": found["digest"], "group": found["group_name"], "status": found["status"],
        "total": found["total"], "done": found["done"],
        "results": [{k: r[k] for k in ("agent_id", "hostname", "status", "exit_status",
                                        "verify_passed", "run_id", "error")}
                    for r in found["results"]]})


# --- runs ----------------------------------------------------------------------------


@endpoint("fixes:read", query=RunQuery, answers={200: Runs})
async def list_runs(request: Request, relay: Relay, who: Principal, *,
                    query: RunQuery) -> Response:
    """Runs, newest first (``?session=&agent=&fix=``), of agents you may see."""
    allowed = visible_group_ids(relay, who)
    ids = None if allowed is None else [a["id"] for a in agents.list_agents(
        relay.engine, relay.presence, allowed)]
    rows = store.list_runs(relay.engine, query.session, query.agent, query.fix, ids,
                           query.limit)
    return reply(Runs, {"runs": [_run_out(r) for r in rows]})


def _run_for(relay: Relay, who: Principal, run_id: str) -> dict[str, Any]:
    run = store.get_run(relay.engine, run_id)
    if run is None:
        raise ApiError(404, "not_found", "no such run")
    _run_visible(relay, who, run)
    return run


@endpoint("fixes:read", path=RunPath, noun="run", answers={200: RunRecord})
async def get_run(request: Request, relay: Relay, who: Principal, *,
                  path: RunPath) -> Response:
    """One run's record: what ran (digest, parameters), how it ended, the output's
    SHA-256 and whether it matched the agent's."""
    return reply(RunRecord, _run_out(_run_for(relay, who, path.run_id)))


@endpoint("fixes:read", path=RunPath, noun="run", answers={200: "text/plain"},
          refuses=(409, 410, 500))
async def get_run_output(request: Request, relay: Relay, who: Principal, *,
                         path: RunPath) -> Response:
    """The kept raw output of a run, as text/plain, checked against the digest the audit
    trail's ``fix.run.ended`` recorded (as the session timeline's evidence is:
    relay/api/evidence.py); 409 ``digest_mismatch`` / ``row_altered`` /
    ``not_in_trail`` names both digests. Each fetch is audited ``evidence.viewed`` (a
    refusal ``evidence.refused``), on the run's session."""
    run = _run_for(relay, who, path.run_id)
    if not run["output_sha256"]:
        raise ApiError(404, "not_found", "that run kept no output")
    target = f"session:{run['session_id']}"
    if run.get("deleted_at"):
        raise ApiError(410, "deleted", gone_text("fix output", run, "output_sha256"),
                       action="evidence.refused", target=target, evidence=run["id"],
                       reason="deleted_by_retention")
    trail = timeline.fix_run_trail(relay.engine, run)
    data = evidence.checked_bytes(relay, f"fix run {run['id']}", run["output_sha256"], trail,
                                  action="evidence.refused", target=target,
                                  evidence=run["id"])
    assert trail is not None  # checked_bytes refuses what the trail does not name
    evidence.viewed(relay, who, run["session_id"], run["id"], "fix_output", trail, data)
    return Response(data, media_type="text/plain; charset=utf-8", headers={
        "x-content-sha256": trail.sha256, "x-trail-seq": str(trail.seq),
        "cache-control": "no-store", "x-content-type-options": "nosniff",
        "content-disposition": f'inline; filename="backline-{run["id"]}.txt"'})


ROUTES = [
    Route("/api/v1/fixes", list_fixes, methods=["GET"]),
    Route("/api/v1/fixes", submit_fix, methods=["POST"]),
    Route("/api/v1/fixes/suggested", suggested_fixes, methods=["GET"]),
    Route("/api/v1/fixes/{fix_id}", get_fix, methods=["GET"]),
    Route("/api/v1/fixes/{fix_id}/diff", diff_fix, methods=["GET"]),
    Route("/api/v1/fixes/{fix_id}/{version}", get_fix_version, methods=["GET"]),
    Route("/api/v1/fixes/{fix_id}/{version}/approve", approve_fix, methods=["POST"]),
    Route("/api/v1/fixes/{fix_id}/{version}/signatures", add_signature, methods=["POST"]),
    Route("/api/v1/fixes/{fix_id}/{version}/revoke", revoke_fix, methods=["POST"]),
    Route("/api/v1/fixes/{fix_id}/{version}/bulk", start_bulk, methods=["POST"]),
    Route("/api/v1/fix-bulks/{bulk_id}", get_bulk, methods=["GET"]),
    Route("/api/v1/fix-runs", list_runs, methods=["GET"]),
    Route("/api/v1/fix-runs/{run_id}", get_run, methods=["GET"]),
    Route("/api/v1/fix-runs/{run_id}/output", get_run_output, methods=["GET"]),
]
