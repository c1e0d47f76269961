"""Which kind of file a delivery is, and where each canonical column comes from in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recjobs import columns as C
from recjobs.errors import IngestError, SettingsError
from recjobs.ingest._text import delimiter_of, first_line, read_header, split_record
from recjobs.settings import Settings

REQUIRED = C.INTERACTION_COLUMNS
# Column names of the MovieLens 20M/25M CSVs, accepted without a mapping.
ALIASES = {C.USER: ("userId",), C.ITEM: ("movieId",)}


def parse_columns_option(text: str) -> dict[str, str]:
    """``user_id=customer,item_id=sku`` (the CLI's ``--columns``) as a mapping.

    Raises :class:`SettingsError` naming the bad pair; unknown canonical names are
    rejected by the ``ingest.columns`` setting itself.
    """
    out: dict[str, str] = {}
    for pair in text.split(","):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SettingsError(f"--columns expects CANONICAL=FILE_COLUMN pairs, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


@dataclass
class Layout:
    """Where each canonical column comes from in one file."""

    kind: str  # "text" or "parquet"
    names: list[str]  # the file's column names (positional names for headerless text)
    source: dict[str, str | None]  # canonical column -> file column; None: default rating
    delimiter: str = ","
    has_header: bool = True

    def wanted(self) -> dict[str, int]:
        """Field positions of the columns read from the file (not a default rating)."""
        return {c: self.names.index(s) for c, s in self.source.items() if s is not None}


def resolve_columns(path: Path, names: list[str], settings: Settings) -> dict[str, str | None]:
    mapping = settings.ingest.columns
    source: dict[str, str | None] = {}
    missing = []
    for col in REQUIRED:
        if col in mapping:
            if mapping[col] not in names:
                raise IngestError(
                    f"{path}: column {mapping[col]!r}, mapped to {col} by ingest.columns "
                    f"(--columns), is not in the file; its columns are {names}"
                )
            source[col] = mapping[col]
        elif col in names:
            source[col] = col
        elif any(a in names for a in ALIASES.get(col, ())):
            source[col] = next(a for a in ALIASES[col] if a in names)
        elif col == C.RATING and settings.ingest.default_rating is not None:
            source[col] = None
        else:
            missing.append(col)
    if missing:
        raise IngestError(
            f"{path}: missing required columns {missing} (header has {names}); expected a "
            f"header naming {list(REQUIRED)} (or MovieLens's userId,movieId), a mapping in "
            "ingest.columns / `recjobs ingest --columns`, or ingest.default_rating for files "
            "without ratings"
        )
    return source


def layout_of(path: Path, settings: Settings) -> Layout:
    """Where each canonical column of the rating file ``path`` comes from; :class:`IngestError` if it cannot."""
    if path.suffix.lower() == ".parquet":
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except (pa.ArrowException, OSError) as exc:
            raise IngestError(f"{path}: not a readable Parquet file ({exc})") from None
        return Layout("parquet", names, resolve_columns(path, names, settings))
    first = first_line(path)
    if not first.strip():
        raise IngestError(f"{path}: file is empty (or its first line is blank)")
    delimiter = delimiter_of(first)
    names = split_record(first, delimiter) or [first]
    known = set(REQUIRED) | set(settings.ingest.columns.values())
    known |= {a for aliases in ALIASES.values() for a in aliases}
    if delimiter != "," and not known & set(names):
        # MovieLens u.data / ratings.dat: no header, the four columns in order.
        return Layout("text", list(REQUIRED), {c: c for c in REQUIRED}, delimiter, False)
    return Layout("text", names, resolve_columns(path, names, settings), delimiter, True)


def sniff_kind(path: Path) -> str:
    """Which kind of file ``path`` is, from its columns: ratings or one of :data:`KINDS`."""
    if path.suffix.lower() == ".parquet":
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except (pa.ArrowException, OSError):
            return "ratings"  # the ratings path reports (and records) the unreadable file
    else:
        names = read_header(path)
    if C.FEATURE in names:
        return "user_features" if C.USER in names else "item_features"
    if C.TITLE in names and C.RATING not in names:
        return "items"
    return "ratings"
