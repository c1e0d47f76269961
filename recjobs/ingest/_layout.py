"""Which kind of file a delivery is, and where each canonical column comes from in it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recjobs import columns as C
from recjobs.errors import IngestError, SettingsError
from recjobs.ingest._text import delimiter_of, first_line, read_header, split_record
from recjobs.settings import Settings

REQUIRED = C.INTERACTION_COLUMNS
# Read when the file has it (or ingest.columns maps it): typed events (settings.feedback).
OPTIONAL = (C.EVENT_TYPE,)
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
    source: dict[str, str | None]  # canonical column -> file column; None: default rating (or none: typed events)
    delimiter: str = ","
    has_header: bool = True

    def wanted(self) -> dict[str, int]:
        """Field positions of the columns read from the file (not a default rating)."""
        return {c: self.names.index(s) for c, s in self.source.items() if s is not None}


def _sources(names: list[str], settings: Settings | None) -> tuple[dict[str, str | None], list[str]]:
    """Canonical column -> the file's column (None: the default rating), and the missing ones."""
    mapping = settings.ingest.columns if settings is not None else {}
    default_rating = settings.ingest.default_rating if settings is not None else None
    source: dict[str, str | None] = {}
    for col in OPTIONAL:
        if col in mapping:
            source[col] = mapping[col]  # resolve_columns names a mapped column the file lacks
        elif col in names:
            source[col] = col
    typed = C.EVENT_TYPE in source
    missing = []
    for col in REQUIRED:
        if col in mapping:
            if mapping[col] in names:
                source[col] = mapping[col]
            else:
                missing.append(col)
        elif col in names:
            source[col] = col
        elif any(a in names for a in ALIASES.get(col, ())):
            source[col] = next(a for a in ALIASES[col] if a in names)
        elif col == C.RATING and (default_rating is not None or typed):
            # An event log's typed rows need no rating; untyped rows get ingest.default_rating.
            source[col] = None
        else:
            missing.append(col)
    return source, missing


def resolve_columns(path: Path, names: list[str], settings: Settings, *, headerless_hint: bool = False
                    ) -> dict[str, str | None]:
    """Where each canonical column comes from in a file with these column ``names``.

    Raises :class:`IngestError` naming the file for a missing column, a mapped column
    the file lacks, or a column it reads that appears more than once (which would be
    ambiguous).
    """
    mapping = settings.ingest.columns
    for col, name in mapping.items():
        if name not in names:
            raise IngestError(
                f"{path}: column {name!r}, mapped to {col} by ingest.columns "
                f"(--columns), is not in the file; its columns are {names}"
            )
    source, missing = _sources(names, settings)
    if missing:
        hint = (" (a file without a header must be MovieLens u.data or ratings.dat: user, item, a "
                "numeric rating and a time, in that order)") if headerless_hint else ""
        raise IngestError(
            f"{path}: missing required columns {missing} (header has {names}); expected a "
            f"header naming {list(REQUIRED)} (or MovieLens's userId,movieId), a mapping in "
            "ingest.columns / `recjobs ingest --columns`, or ingest.default_rating (or an event_type "
            f"column) for files without ratings{hint}"
        )
    for name in source.values():
        if name is not None and names.count(name) > 1:
            raise IngestError(f"{path}: column {name!r} appears {names.count(name)} times; "
                              "which one holds the data is ambiguous")
    return source


def _looks_like_data(fields: list[str]) -> bool:
    """Whether a first line is a MovieLens record (user, item, numeric rating, time), not a header."""
    if len(fields) != len(REQUIRED):
        return False
    try:
        float(fields[2])
    except ValueError:
        return False
    when = fields[3]
    try:
        float(when)
        return True
    except ValueError:
        pass
    try:
        dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


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
    headerless = delimiter != ","
    if headerless and not known & set(names) and _looks_like_data(names):
        # MovieLens u.data / ratings.dat: no header, the four columns in order.
        return Layout("text", list(REQUIRED), {c: c for c in REQUIRED}, delimiter, False)
    return Layout("text", names, resolve_columns(path, names, settings, headerless_hint=headerless),
                  delimiter, True)


def sniff_kind(path: Path, settings: Settings | None = None) -> str:
    """Which kind of file ``path`` is, from its columns: ratings or a side table (:data:`~recjobs.data.lake.SIDE_KINDS`).

    A file with every ratings column (after ``ingest.columns`` and the MovieLens names;
    ``settings`` None: canonical names only) is a ratings file, whatever else it has:
    extra columns are ignored. Otherwise ``feature`` or ``title`` columns make a side file.
    """
    if path.suffix.lower() == ".parquet":
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except (pa.ArrowException, OSError):
            return "ratings"  # the ratings path reports (and records) the unreadable file
    else:
        names = read_header(path)
    if not _sources(names, settings)[1]:
        return "ratings"
    if C.FEATURE in names:
        return "user_features" if C.USER in names else "item_features"
    if C.TITLE in names:
        return "items"
    return "ratings"
