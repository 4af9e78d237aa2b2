"""Every text column of the relay's tables is a Str / LongStr (schema.py): a plain
sa.String would store NUL or a lone surrogate differently on SQLite and PostgreSQL
(PostgreSQL refuses NUL: the write fails and, for the audit trail, the event is lost)."""

from __future__ import annotations

import sqlalchemy as sa

from backline.relay import schema


def test_text_columns_go_through_storable() -> None:
    plain = [f"{t.name}.{c.name}" for t in schema.metadata.tables.values()
             for c in t.columns
             if isinstance(c.type, sa.String | sa.Text) or (
                 isinstance(c.type, sa.types.TypeDecorator)
                 and not isinstance(c.type, schema.Str))]
    assert plain == [], f"use schema.Str / LongStr for {plain}"
    assert any(isinstance(c.type, schema.Str)
               for c in schema.metadata.tables["recordings"].columns)
