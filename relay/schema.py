"""The relay's tables (SQLAlchemy Core). Alembic migrations create and change them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from backline.relay.db import storable

metadata = sa.MetaData()


class Str(sa.types.TypeDecorator[str]):
    """VARCHAR(n) that keeps any ``str`` the same way in SQLite and PostgreSQL
    (:func:`backline.relay.db.storable`). In the database it is a plain VARCHAR:
    migrations write ``sa.String``."""

    impl = sa.String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return storable(value) if isinstance(value, str) else value


class LongStr(Str):
    """TEXT, likewise."""

    impl = sa.Text
    cache_ok = True  # SQLAlchemy asks each subclass itself (it warned on every query)

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("username", Str(64), nullable=False, unique=True),
    sa.Column("role", Str(16), nullable=False),
    sa.Column("password_hash", Str(255), nullable=False),
    sa.Column("must_change_password", sa.Boolean, nullable=False, default=False),
    sa.Column("totp_secret", Str(64)),
    sa.Column("totp_pending", Str(64)),
    # The last TOTP time step accepted (a code is accepted once; migration 0004).
    sa.Column("totp_last_step", sa.BigInteger),
    sa.Column("totp_required", sa.Boolean, nullable=False, default=False),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # Increased by a password change or reset and by disabling the user: device
    # cookies carry it, so those issued before stop counting (migration 0005).
    sa.Column("credential_epoch", sa.Integer, nullable=False, default=0,
              server_default="0"),
)

web_sessions = sa.Table(
    "web_sessions", metadata,
    sa.Column("id_hash", Str(64), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("csrf_token", Str(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("address", Str(64), nullable=False),
)

groups = sa.Table(
    "groups", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", Str(128), nullable=False, unique=True),
    sa.Column("description", Str(512), nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
)

grants = sa.Table(
    "grants", metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("group_id", sa.Integer, sa.ForeignKey("groups.id", ondelete="CASCADE"),
              primary_key=True),
)

agents = sa.Table(
    "agents", metadata,
    sa.Column("id", Str(64), primary_key=True),
    sa.Column("group_id", sa.Integer, sa.ForeignKey("groups.id"), nullable=False),
    sa.Column("public_key", sa.LargeBinary(32), nullable=False),
    sa.Column("hostname", Str(256), nullable=False),
    sa.Column("os", Str(256), nullable=False),
    sa.Column("os_version", Str(256), nullable=False),
    sa.Column("arch", Str(256), nullable=False),
    sa.Column("version", Str(256), nullable=False),
    sa.Column("label", Str(256), nullable=False, default=""),
    sa.Column("enrolled_at", sa.Float, nullable=False),
    sa.Column("enroll_token_id", Str(64), nullable=False),
    sa.Column("last_seen", sa.Float),
    sa.Column("last_address", Str(64)),
    sa.Column("health", LongStr, nullable=False, default="[]"),
    sa.Column("revoked_at", sa.Float),
)

enroll_tokens = sa.Table(
    "enroll_tokens", metadata,
    sa.Column("id", Str(64), primary_key=True),
    sa.Column("secret_hash", Str(64), nullable=False),
    sa.Column("group_id", sa.Integer, sa.ForeignKey("groups.id"), nullable=False),
    sa.Column("max_uses", sa.Integer, nullable=False),
    sa.Column("uses", sa.Integer, nullable=False, default=0),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Column("created_by", Str(128), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

api_tokens = sa.Table(
    "api_tokens", metadata,
    sa.Column("id", Str(64), primary_key=True),
    sa.Column("name", Str(128), nullable=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("secret_hash", Str(64), nullable=False),
    sa.Column("scopes", Str(512), nullable=False),
    sa.Column("allowed_cidrs", Str(1024), nullable=False, default=""),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_used_at", sa.Float),
)

audit_events = sa.Table(
    "audit_events", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("actor", Str(256), nullable=False),
    sa.Column("action", Str(128), nullable=False),
    sa.Column("target", Str(256), nullable=False),
    sa.Column("details", LongStr, nullable=False),
    sa.Column("prev_hash", Str(64), nullable=False),
    sa.Column("hash", Str(64), nullable=False),
    sa.Index("ix_audit_actor_seq", "actor", "seq"),
    sa.Index("ix_audit_action_seq", "action", "seq"),
    sa.Index("ix_audit_target_seq", "target", "seq"),
    sa.Index("ix_audit_time", "time"),
)

# One row: where the chain ends. Appenders lock it, so the chain stays a chain even
# with several relay nodes writing to one PostgreSQL database.
audit_head = sa.Table(
    "audit_head", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("hash", Str(64), nullable=False),
)

audit_checkpoints = sa.Table(
    "audit_checkpoints", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("hash", Str(64), nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("key_id", Str(64), nullable=False),
    sa.Column("signature", Str(128), nullable=False),
)

# Support sessions: managed (opened on an enrolled agent) or attended (a one-time
# code the customer types into `backline-agent join`). The code is stored only as an
# HMAC; `node` is the relay URL that holds the live SSH connection.
support_sessions = sa.Table(
    "support_sessions", metadata,
    sa.Column("id", Str(64), primary_key=True),
    sa.Column("mode", Str(16), nullable=False),
    sa.Column("agent_id", Str(64)),
    sa.Column("group_id", sa.Integer),
    sa.Column("technician", Str(64), nullable=False),
    sa.Column("opened_by", Str(256), nullable=False),
    sa.Column("reason", Str(512), nullable=False, default=""),
    sa.Column("ticket", Str(128), nullable=False, default=""),
    sa.Column("capabilities", Str(512), nullable=False, default=""),
    sa.Column("state", Str(16), nullable=False),
    sa.Column("node", Str(256), nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("opened_at", sa.Float),
    sa.Column("ready_at", sa.Float),
    sa.Column("closed_at", sa.Float),
    sa.Column("close_reason", Str(256)),
    sa.Column("code_hash", Str(64)),
    sa.Column("code_expires_at", sa.Float),
    sa.Column("remote_hostname", Str(256)),
    sa.Column("remote_address", Str(64)),
    sa.Index("ix_support_sessions_state", "state"),
    sa.Index("ix_support_sessions_agent", "agent_id", "created_at"),
    sa.Index("ix_support_sessions_code", "code_hash"),
)

# A diagnostics run as the relay received it: the raw stream is a blob named by its
# SHA-256, the same hash the audit trail records for the channel.
diagnostics_reports = sa.Table(
    "diagnostics_reports", metadata,
    sa.Column("id", Str(64), primary_key=True),
    sa.Column("agent_id", Str(64), nullable=False),
    sa.Column("session_id", Str(64), nullable=False),
    sa.Column("technician", Str(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("sha256", Str(64), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("findings", sa.Integer, nullable=False),
    sa.Column("worst", Str(16), nullable=False),
    sa.Index("ix_reports_agent_time", "agent_id", "created_at"),
)

# A terminal's recording (asciicast v2): the file is a blob named by its SHA-256, the
# hash the audit trail records when the channel ends (migration 0006).
recordings = sa.Table(
    "recordings", metadata,
    sa.Column("id", Str(64), primary_key=True),
    sa.Column("session_id", Str(64), nullable=False),
    sa.Column("capability", Str(32), nullable=False),
    sa.Column("agent_id", Str(64), nullable=False),
    sa.Column("technician", Str(64), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", Str(64), nullable=False),
    sa.Column("keystrokes", sa.Boolean, nullable=False, default=False),
    sa.Index("ix_recordings_session", "session_id", "started_at"),
)

# --- approved fixes (issue 12; relay/fixes/store.py, migration 0007) ---------------
# One row per submitted version of a fix. Never updated, never deleted: a version is
# immutable once submitted (the primary key refuses a second one), so the history of
# what each version was is never lost. ``manifest`` is FixManifest.as_dict() as JSON,
# script texts included: what travels to the agent.
fix_versions = sa.Table(
    "fix_versions", metadata,
    sa.Column("fix_id", Str(48), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("digest", Str(80), nullable=False),
    sa.Column("title", Str(128), nullable=False),
    sa.Column("risk", Str(16), nullable=False),
    sa.Column("manifest", LongStr, nullable=False),
    sa.Column("author", Str(64), nullable=False),
    sa.Column("submitted_at", sa.Float, nullable=False),
    sa.Index("ix_fix_versions_digest", "digest"),
)

# A signature over one version's canonical bytes: ``relay`` (an approval: the relay's
# fix key, signed when an approver who is not the author approved) or ``offline`` (an
# approver key the relay never holds, checked against config ``fix_offline_keys``).
fix_signatures = sa.Table(
    "fix_signatures", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("fix_id", Str(48), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("digest", Str(80), nullable=False),
    sa.Column("kind", Str(16), nullable=False),
    sa.Column("approver", Str(64), nullable=False),
    sa.Column("key", Str(128), nullable=False),
    sa.Column("signature", LongStr, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.UniqueConstraint("fix_id", "version", "key", name="uq_fix_signatures_key"),
    sa.Index("ix_fix_signatures_version", "fix_id", "version"),
)

# The revocation list: one row per revoked version; the serial of the list agents are
# sent is the highest ``serial`` (a revocation is never lifted).
fix_revocations = sa.Table(
    "fix_revocations", metadata,
    sa.Column("serial", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("fix_id", Str(48), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("digest", Str(80), nullable=False),
    sa.Column("reason", Str(512), nullable=False),
    sa.Column("revoked_by", Str(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.UniqueConstraint("fix_id", "version", name="uq_fix_revocations_version"),
)

# One run of a fix on one agent: what ran (digest, params), how it ended, and the kept
# output (a blob named by its SHA-256, equal to the agent's ``output_sha256``).
fix_runs = sa.Table(
    "fix_runs", metadata,
    sa.Column("id", Str(64), primary_key=True),
    sa.Column("fix_id", Str(48), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("digest", Str(80), nullable=False),
    sa.Column("session_id", Str(64), nullable=False),
    sa.Column("agent_id", Str(64), nullable=False),
    sa.Column("technician", Str(64), nullable=False),
    sa.Column("params", LongStr, nullable=False),
    sa.Column("finding", Str(128)),
    sa.Column("bulk_id", Str(64)),
    sa.Column("status", Str(32), nullable=False),
    sa.Column("refused_reason", Str(64)),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("exit_status", sa.Integer),
    sa.Column("signal", Str(32)),
    sa.Column("timed_out", sa.Boolean),
    sa.Column("cancelled", sa.Boolean),
    sa.Column("duration_ms", sa.Float),
    sa.Column("output_bytes", sa.BigInteger),
    sa.Column("kept_bytes", sa.BigInteger),
    sa.Column("output_sha256", Str(64)),
    sa.Column("output_ok", sa.Boolean),
    sa.Column("verify_passed", sa.Boolean),
    sa.Column("cleared", sa.Boolean),
    sa.Index("ix_fix_runs_session", "session_id", "started_at"),
    sa.Index("ix_fix_runs_agent", "agent_id", "started_at"),
    sa.Index("ix_fix_runs_fix", "fix_id", "version", "started_at"),
    sa.Index("ix_fix_runs_bulk", "bulk_id"),
)

# A bulk run over a group's online agents, and one result row per agent.
fix_bulks = sa.Table(
    "fix_bulks", metadata,
    sa.Column("id", Str(64), primary_key=True),
    sa.Column("fix_id", Str(48), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("digest", Str(80), nullable=False),
    sa.Column("group_name", Str(128), nullable=False),
    sa.Column("requested_by", Str(64), nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("status", Str(16), nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
)

fix_bulk_results = sa.Table(
    "fix_bulk_results", metadata,
    sa.Column("bulk_id", Str(64), primary_key=True),
    sa.Column("agent_id", Str(64), primary_key=True),
    sa.Column("hostname", Str(256), nullable=False),
    sa.Column("status", Str(32), nullable=False),
    sa.Column("exit_status", sa.Integer),
    sa.Column("verify_passed", sa.Boolean),
    sa.Column("run_id", Str(64)),
    sa.Column("error", Str(256)),
)

# --- proofs (issue 14): the audit trail's Merkle tree and its signed checkpoints ------
# The RFC 6962 tree over the audit events (relay/audit_tree.py): one row per aligned
# complete subtree, the node (level, idx) being the root of leaves
# [idx * 2**level, (idx + 1) * 2**level), so any root or proof is O(log n) rows.
audit_tree = sa.Table(
    "audit_tree", metadata,
    sa.Column("level", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
)

# One C2SP signed-note checkpoint per signed audit checkpoint (relay/audit_note.py):
# ``size`` is the tree size, the seq of the last event it covers.
audit_notes = sa.Table(
    "audit_notes", metadata,
    sa.Column("size", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("root", Str(64), nullable=False),
    sa.Column("origin", Str(256), nullable=False),
    sa.Column("note", LongStr, nullable=False),
    sa.Column("time", sa.Float, nullable=False),
)

# --- timeline (issue 14; relay/term_index.py, migration 0009) ----------------------
# The words typed or printed in a terminal recording, for finding sessions by text:
# one row per (word, recording, moment), at most a few moments per word and recording
# (relay/term_index.py). Built when the recording is stored; a plain B-tree on
# ``word`` works the same in SQLite and PostgreSQL (no FTS extension needed).
recording_words = sa.Table(
    "recording_words", metadata,
    sa.Column("word", Str(64), nullable=False),
    sa.Column("recording_id", Str(64), nullable=False),
    sa.Column("session_id", Str(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("ix_recording_words_word", "word", "session_id"),
    sa.Index("ix_recording_words_recording", "recording_id"),
)

# Which terminal recordings are indexed (and how many words), so that a search can
# say what it could not look into, and a re-index knows what is left.
recording_indexes = sa.Table(
    "recording_indexes", metadata,
    sa.Column("recording_id", Str(64), primary_key=True),
    sa.Column("session_id", Str(64), nullable=False),
    sa.Column("sha256", Str(64), nullable=False),
    sa.Column("words", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("indexed_at", sa.Float, nullable=False),
)

# --- reports (issue 14: session outcome; migration 0010) -----------------------------
# A session's outcome, set by its technician (or an admin) when closing it or later
# (relay/api/session_outcome.py). The trail's ``session.outcome`` events are what the
# management reports count; these columns are the latest value, for the session page.
support_sessions.append_column(sa.Column("outcome", Str(16)))
support_sessions.append_column(sa.Column("outcome_note", Str(1024), nullable=False,
                                         default="", server_default=""))
support_sessions.append_column(sa.Column("outcome_by", Str(64)))
support_sessions.append_column(sa.Column("outcome_at", sa.Float))

# --- siem: SIEM streaming cursors, legal holds, retention (issue 14; migration 0011) ---
# Where each SIEM destination got to: the last event handed over (relay/siem/stream.py).
siem_cursors = sa.Table(
    "siem_cursors", metadata,
    sa.Column("destination", Str(64), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("hash", Str(64), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# A legal hold keeps a session's, an agent's or a group's recordings and reports from
# retention until it is lifted (relay/retention.py). Never deleted: lifting sets
# lifted_at, so who held what and when stays readable.
legal_holds = sa.Table(
    "legal_holds", metadata,
    sa.Column("id", Str(64), primary_key=True),
    sa.Column("scope", Str(16), nullable=False),
    sa.Column("subject", Str(128), nullable=False),
    sa.Column("reason", Str(512), nullable=False),
    sa.Column("placed_by", Str(64), nullable=False),
    sa.Column("placed_at", sa.Float, nullable=False),
    sa.Column("lifted_by", Str(64)),
    sa.Column("lifted_at", sa.Float),
    sa.Column("lift_reason", Str(512)),
    sa.Index("ix_legal_holds_subject", "scope", "subject"),
)

# Retention deletes the blob and keeps the row, marked: the trail keeps the digest.
for _table in (recordings, diagnostics_reports, fix_runs):
    _table.append_column(sa.Column("deleted_at", sa.Float))

# --- reports: self-service fix runs, scheduled report cursors (issue 14; migration 0012) ---
# Each self-service run an agent reported and the relay recorded (``fix.self_service.ended``),
# inserted in the same transaction as that audit event: the key that makes a report sent
# again (after a lost answer, a crash) a ``duplicate``, never a second event. Keyed by the
# agent too, so that one agent cannot claim another's run id (relay/fixes/self_service.py).
self_service_runs = sa.Table(
    "self_service_runs", metadata,
    sa.Column("agent_id", Str(64), primary_key=True),
    sa.Column("run_id", Str(40), primary_key=True),
    sa.Column("fix_id", Str(48), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("recorded_at", sa.Float, nullable=False),
    sa.Index("ix_self_service_runs_recorded_at", "recorded_at"),  # pruned by age (0013)
)

# Where each scheduled report (schedule, group, way) got to: the end of the last period
# delivered, and which relay node is delivering one now, until when (several nodes share
# the database: one delivers). relay/reports/delivery.py.
report_deliveries = sa.Table(
    "report_deliveries", metadata,
    sa.Column("key", Str(200), primary_key=True),
    sa.Column("until", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("claimed_by", Str(32)),
    sa.Column("claimed_until", sa.Float),
    # A failing delivery of the oldest owed period: failures in a row, and when (wall
    # clock) any node may try again (migration 0013).
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("retry_at", sa.Float),
)
