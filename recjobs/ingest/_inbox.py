"""The inbox: which delivered files are there, which are new, and ingesting them all.

Files stay in the inbox after they are ingested (ingest remembers content by hash), so
"a file is there" is not "there is work". A file is pending when its content hash is in
neither state of ``ingest_log`` (ingested, or rejected on an earlier run under the same
ingest settings) and it has not been modified for ``settle_seconds`` (a delivery still
being copied in is left alone until it stops changing): what the inbox-watching Airflow
DAG waits for.

Hashes are cached in the lake (``Lake.inbox_cache``) by (path, size, mtime), so a check
every minute hashes only new or changed files, not every file delivered so far.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recjobs.data.lake import Lake
from recjobs.db.schema import ingest_log
from recjobs.errors import IngestError
from recjobs.files import write_text
from recjobs.ingest._layout import sniff_kind
from recjobs.ingest._ratings import ingest_file
from recjobs.ingest._report import STATUS_MERGING, STATUS_REJECTED, IngestReport, file_sha256
from recjobs.ingest._side import ingest_side_file
from recjobs.ingest.ledger import judged_under_other_settings
from recjobs.settings import Settings

log = logging.getLogger(__name__)

INBOX_PATTERNS = ("*.csv", "*.tsv", "*.data", "*.dat", "*.parquet")


def inbox_files(settings: Settings) -> list[Path]:
    """Files waiting in the inbox, in name order (so a rerun sees the same order)."""
    inbox = settings.inbox
    if not inbox.exists():
        return []
    found = {p for pattern in INBOX_PATTERNS for p in inbox.glob(pattern) if p.is_file()}
    return sorted(found)


def ingest_path(path: Path, settings: Settings, engine: Engine, *, force: bool = False) -> IngestReport:
    """Ingest one delivered file as what its columns say it is (:func:`sniff_kind`): ratings or a side file."""
    path = Path(path)
    try:
        kind = sniff_kind(path, settings) if path.is_file() and path.stat().st_size else "ratings"
    except OSError as exc:  # e.g. a name too long for the file system
        raise IngestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if kind == "ratings":
        return ingest_file(path, settings, engine, force=force)
    return ingest_side_file(path, settings, engine, kind, force=force)


def ingest_inbox(settings: Settings, engine: Engine) -> list[IngestReport]:
    """Ingest every new file in the inbox; files seen before (by content) are skipped.

    Side files (features, titles) are recognised by their columns and go to
    :mod:`recjobs.ingest._side`. Every file is attempted; if any fails, an
    :class:`IngestError` naming each failed file and why is raised after the rest have
    been ingested. Files rejected on an earlier run are skipped with a warning.
    """
    reports: list[IngestReport] = []
    errors: list[str] = []
    for path in inbox_files(settings):
        try:
            reports.append(ingest_path(path, settings, engine))
        except IngestError as exc:
            log.error("%s", exc)
            errors.append(str(exc))
        except OSError as exc:
            errors.append(f"{path}: cannot read: {exc}")
    if errors:
        raise IngestError(
            f"{len(errors)} of {len(reports) + len(errors)} inbox files failed: " + "; ".join(errors)
        )
    return reports


def _read_cache(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged: it is only a cache, rebuild it
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, cache: dict[str, list]) -> None:
    write_text(path, json.dumps(cache, sort_keys=True))  # readers see the old cache or the new one


def pending_inbox_files(settings: Settings, engine: Engine, *, settle_seconds: float = 30.0,
                        now: float | None = None) -> list[Path]:
    """Inbox files whose content was never ingested nor rejected and that have settled, in name order."""
    now = time.time() if now is None else now
    cache_path = Lake.of(settings).inbox_cache
    cached = _read_cache(cache_path)
    kept: dict[str, list] = {}
    hashes: dict[Path, str] = {}
    unsettled = 0
    for path in inbox_files(settings):
        try:
            st = path.stat()
        except FileNotFoundError:  # moved away between listing and now
            continue
        if now - st.st_mtime < settle_seconds:
            unsettled += 1
            continue
        key = str(path)
        entry = cached.get(key)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [st.st_size, st.st_mtime_ns]:
            digest = entry[2]
        else:
            try:
                digest = file_sha256(path)
            except OSError as exc:
                # Not ours to fail on: the ingest run reports unreadable files by name.
                log.warning("%s: cannot read it to check whether it is new: %s", path, exc)
                continue
        kept[key] = [st.st_size, st.st_mtime_ns, digest]
        hashes[path] = digest
    if kept != cached:
        _write_cache(cache_path, kept)
    known: set[str] = set()
    digests = sorted(set(hashes.values()))
    with engine.connect() as conn:
        for start in range(0, len(digests), 500):  # stay under SQLite's bound-parameter limit
            chunk = digests[start:start + 500]
            rows = conn.execute(sa.select(ingest_log.c.content_hash, ingest_log.c.status, ingest_log.c.reason)
                                .where(ingest_log.c.content_hash.in_(chunk)))
            # A rejection judged under other ingest settings is retried under the current ones;
            # a reserved row is an ingest that stopped before it finished.
            known.update(row.content_hash for row in rows
                         if row.status != STATUS_MERGING
                         and not (row.status == STATUS_REJECTED
                                  and judged_under_other_settings(row.reason, settings)))
    pending = [p for p, d in hashes.items() if d not in known]
    if unsettled:
        log.info("%d inbox file(s) modified in the last %.0fs: left until they stop changing",
                 unsettled, settle_seconds)
    return pending
