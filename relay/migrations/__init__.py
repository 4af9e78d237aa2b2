"""Alembic migrations of the relay database; run on every start (idempotent)."""
