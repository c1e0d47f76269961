"""The example SQL files in sql/ as a simple runner takes them: split on ``;`` and run piece by piece.

A ``;`` inside a comment cuts a statement (or a comment) in two for such a runner, so every
piece must be one whole statement that runs on a real SQLite database with the schema.
"""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from recjobs.db import make_engine
from recjobs.db.schema import ensure_schema
from tests.conftest import ROOT

EXAMPLES = sorted(p for p in (ROOT / "sql").glob("*.sql") if not p.name.startswith("schema_"))


def _code(piece: str) -> str:
    """``piece`` without its comment lines and trailing comments."""
    return "\n".join(line.split("--", 1)[0] for line in piece.splitlines()).strip()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_splitting_an_example_file_on_semicolons_gives_whole_statements(path, tmp_path):
    pieces = path.read_text().split(";")
    # After the last ";" only blanks and comments may follow.
    assert not _code(pieces[-1]), f"{path.name} ends with a statement without ';'"
    statements = pieces[:-1]
    assert statements, path.name
    engine = make_engine(f"sqlite:///{tmp_path / 'recs.db'}")
    ensure_schema(engine)
    with engine.begin() as conn:
        for piece in statements:
            assert _code(piece), f"{path.name}: a piece holds no statement (a ';' in a comment?): {piece!r}"
            params = {name: "x" for name in re.findall(r"(?<!:):([a-z_]+)", _code(piece))}
            conn.execute(sa.text(piece), params)  # raises on a piece that is not a whole statement
    engine.dispose()

