"""Side files: user and item features, and item titles.

Formats (CSV with a header, or Parquet with the same columns):

* item features: ``item_id,feature[,weight]``, one row per (item, feature), e.g.
  ``50,genre=Sci-Fi``; weight defaults to 1;
* user features: ``user_id,feature[,weight]``, e.g. ``196,occupation=writer``;
* item titles: ``item_id,title``.

A new file replaces the features of the ids it names and keeps the others, so
files can be delivered whole or as updates. Rows are validated like ratings: empty
ids or features and non-numeric weights are quarantined with a reason.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.engine import Engine

from recjobs import columns as C
from recjobs.db import items as items_table
from recjobs.ingest import (
    IngestError,
    IngestReport,
    _first_line,
    file_sha256,
    ingest_file,
    known_hash,
    read_header,
    record_ingest,
    record_rejection,
    seen_before,
)
from recjobs.interactions import Interactions, SideFeatures, align_features
from recjobs.lake import LakeLockTimeout, atomic_write_parquet, lake_lock
from recjobs.settings import Settings

log = logging.getLogger(__name__)

KINDS = {"item_features": C.ITEM, "user_features": C.USER, "items": C.ITEM}


def _path(settings: Settings, kind: str) -> Path:
    return settings.features_dir / f"{kind}.parquet"


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


def _read_any(path: Path) -> pd.DataFrame:
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path).astype(object).astype("string")
    # utf-8-sig: a byte-order mark (Excel) must not become part of the first column's name.
    try:
        return pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[],
                           encoding="utf-8-sig", sep="\t" if "\t" in _first_line(path) else ",")
    except (ValueError, pd.errors.ParserError) as exc:
        raise IngestError(f"{path}: cannot parse as CSV: {exc}") from None


def ingest_side_frame(
    frame: pd.DataFrame, kind: str, settings: Settings, source: str,
    check: Callable[[int, pd.DataFrame], None] | None = None,
) -> tuple[int, int, pd.DataFrame]:
    """Validate and merge a side frame; returns (rows valid, rows quarantined, quarantined rows).

    ``check(n_bad, bad_rows)`` runs before anything is written and may raise to refuse
    the whole frame.
    """
    key = KINDS[kind]
    value_col = C.TITLE if kind == "items" else C.FEATURE
    missing = [c for c in (key, value_col) if c not in frame.columns]
    if missing:
        raise IngestError(f"{source}: missing required columns {missing} for {kind}")
    frame = frame.copy()
    ids = frame[key].astype("string").str.strip()
    values = frame[value_col].astype("string").str.strip()
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")
    reason[ids.isna() | (ids == "")] = f"empty {key}"
    if kind != "items":
        reason[reason.isna() & (values.isna() | (values == ""))] = "empty feature"
        weights = (
            pd.to_numeric(frame[C.WEIGHT], errors="coerce")
            if C.WEIGHT in frame.columns
            else pd.Series(1.0, index=frame.index)
        )
        reason[reason.isna() & ~np.isfinite(weights.astype("float64").fillna(np.nan))] = "weight is not a number"
    good = reason.isna()
    bad = frame[~good].assign(**{C.REASON: reason[~good], C.SOURCE_ROW: frame.index[~good] + 2})
    clean = pd.DataFrame({key: ids[good].astype(object), value_col: values[good].astype(object)})
    if kind != "items":
        clean[C.WEIGHT] = weights[good].astype("float32").to_numpy()
    if check is not None:
        check(int((~good).sum()), bad)
    path = _path(settings, kind)
    if path.exists():
        old = pq.read_table(path).to_pandas()
        old = old[~old[key].isin(set(clean[key]))]
        clean = pd.concat([old, clean], ignore_index=True)
    subset = [key] if kind == "items" else [key, C.FEATURE]
    clean = clean.drop_duplicates(subset, keep="last").sort_values(subset, kind="stable")
    atomic_write_parquet(pa.Table.from_pandas(clean.reset_index(drop=True), preserve_index=False), path)
    return int(good.sum()), int((~good).sum()), bad


def ingest_side_file(path: Path | str, settings: Settings, engine: Engine, kind: str | None = None) -> IngestReport:
    """Ingest a features or titles file (see the module docstring); skipped if seen before."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    digest = file_sha256(path)
    report = IngestReport(source_path=str(path), content_hash=digest)
    if seen_before(engine, report):
        return report
    kind = kind or sniff_kind(path)
    try:
        frame = _read_any(path)
        if frame.empty:
            raise IngestError(f"{path}: no data rows")
        report.rows_read = len(frame)
        # The side file's merge is a read-modify-write of the lake, like a ratings merge.
        with lake_lock(settings.lake, settings.ingest.lock_timeout_seconds):
            report.rows_valid, report.rows_quarantined, bad = ingest_side_frame(
                frame, kind, settings, str(path), check=lambda n_bad, bad: _check_share(
                    report, settings, bad, kind, n_bad))
            if kind == "items":
                sync_titles(settings, engine)
            record_ingest(engine, report, kind=kind)
    except LakeLockTimeout as exc:
        raise IngestError(f"{path}: {exc}") from None
    except IngestError as exc:
        record_rejection(engine, report, kind, str(exc))
        raise
    return report


def _check_share(
    report: IngestReport, settings: Settings, bad: pd.DataFrame, kind: str, n_bad: int
) -> None:
    report.rows_quarantined = n_bad
    if report.rows_quarantined:
        qpath = settings.quarantine_dir / f"{report.content_hash[:16]}.parquet"
        atomic_write_parquet(pa.Table.from_pandas(bad.astype("string").reset_index(drop=True),
                                                  preserve_index=False), qpath)
        report.quarantine_path = str(qpath)
    share = report.rows_quarantined / max(report.rows_read, 1)
    if share > settings.ingest.max_invalid_share:
        raise IngestError(f"{report.source_path}: {report.rows_quarantined} of {report.rows_read} {kind} rows "
                          f"invalid ({share:.2%}); bad rows: {report.quarantine_path}")


def sync_titles(settings: Settings, engine: Engine) -> None:
    """Copy item titles from the lake into the ``items`` table, for apps and the dashboard."""
    path = _path(settings, "items")
    if not path.exists():
        return
    titles = pq.read_table(path).to_pandas()
    with engine.begin() as conn:
        conn.execute(items_table.delete())
        conn.execute(items_table.insert(), titles[[C.ITEM, C.TITLE]].to_dict("records"))


def load_side_features(settings: Settings, data: Interactions) -> SideFeatures | None:
    """Feature matrices aligned to ``data``, or None when no feature files were ingested."""
    found = {}
    for kind in ("user_features", "item_features"):
        path = _path(settings, kind)
        found[kind] = pq.read_table(path).to_pandas() if path.exists() else None
    if all(v is None for v in found.values()):
        return None
    user, user_names = align_features(found["user_features"], C.USER, data.user_ids)
    item, item_names = align_features(found["item_features"], C.ITEM, data.item_ids)
    return SideFeatures(user, item, user_names, item_names)


# -- MovieLens 100k ---------------------------------------------------------------
ML_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]


def _age_band(age: int) -> str:
    for upper, band in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55")):
        if age < upper:
            return band
    return "56+"


def movielens_side_frames(directory: Path) -> dict[str, pd.DataFrame]:
    """Item genres, titles and user age band/gender/occupation from ``u.item`` and ``u.user``."""
    out: dict[str, pd.DataFrame] = {}
    item_path = directory / "u.item"
    if item_path.exists():
        raw = pd.read_csv(item_path, sep="|", header=None, encoding="latin-1", dtype=str)
        out["items"] = pd.DataFrame({C.ITEM: raw[0], C.TITLE: raw[1]})
        flags = raw.iloc[:, 5:5 + len(ML_GENRES)].astype(int).to_numpy()
        rows, cols = np.nonzero(flags)
        out["item_features"] = pd.DataFrame(
            {C.ITEM: raw[0].to_numpy()[rows], C.FEATURE: [f"genre={ML_GENRES[c]}" for c in cols]}
        )
    user_path = directory / "u.user"
    if user_path.exists():
        raw = pd.read_csv(user_path, sep="|", header=None, encoding="latin-1", dtype=str)
        parts = [
            pd.DataFrame({C.USER: raw[0], C.FEATURE: "age=" + raw[1].astype(int).map(_age_band)}),
            pd.DataFrame({C.USER: raw[0], C.FEATURE: "gender=" + raw[2]}),
            pd.DataFrame({C.USER: raw[0], C.FEATURE: "occupation=" + raw[3]}),
        ]
        out["user_features"] = pd.concat(parts, ignore_index=True)
    return out


def import_movielens(directory: Path | str, settings: Settings, engine: Engine) -> list[IngestReport]:
    """Ingest a MovieLens 100k folder: ratings from ``u.data`` and side files from ``u.item``/``u.user``."""
    directory = Path(directory)
    if not (directory / "u.data").exists():
        raise IngestError(f"{directory}: no u.data (expected a MovieLens 100k folder)")
    reports = [ingest_file(directory / "u.data", settings, engine)]
    for kind, frame in movielens_side_frames(directory).items():
        source = directory / ("u.item" if kind != "user_features" else "u.user")
        digest = hashlib.sha256(f"{file_sha256(source)}:{kind}".encode()).hexdigest()
        report = IngestReport(source_path=str(source), content_hash=digest)
        if not known_hash(engine, digest):
            report.rows_read = len(frame)
            report.rows_valid, report.rows_quarantined, _ = ingest_side_frame(frame, kind, settings, str(source))
            record_ingest(engine, report, kind=kind)
        else:
            report.skipped = True
        reports.append(report)
    sync_titles(settings, engine)
    return reports


__all__ = ["ingest_side_file", "import_movielens", "load_side_features", "sniff_kind"]
