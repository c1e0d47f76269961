"""MovieLens 100k folders: ratings from ``u.data``, side tables from ``u.item`` and ``u.user``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from recjobs import columns as C
from recjobs.data.lake import Lake
from recjobs.errors import IngestError, LakeLockTimeout
from recjobs.ingest._ratings import ingest_file
from recjobs.ingest._report import IngestReport, file_sha256
from recjobs.ingest._side import ingest_side_frame, sync_titles
from recjobs.ingest.ledger import known_hash, record_ingest, reserve
from recjobs.settings import Settings

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
    lake = Lake.of(settings)
    wait = settings.ingest.lock_timeout_seconds
    try:
        for kind, frame in movielens_side_frames(directory).items():
            source = directory / ("u.item" if kind != "user_features" else "u.user")
            digest = hashlib.sha256(f"{file_sha256(source)}:{kind}".encode()).hexdigest()
            report = IngestReport(source_path=str(source), content_hash=digest)
            # Side tables are read-modify-written: under the lake's lock, like every lake write.
            with lake.writer() as writer:
                if not known_hash(engine, digest):
                    report.rows_read = len(frame)
                    reserve(engine, report, kind, wait_seconds=wait)
                    report.rows_valid, report.rows_quarantined, _ = ingest_side_frame(
                        writer, frame.set_axis(pd.RangeIndex(1, len(frame) + 1)), kind, str(source))
                    record_ingest(engine, report, kind=kind, wait_seconds=wait)
                else:
                    report.skipped = True
            reports.append(report)
    except LakeLockTimeout as exc:
        raise IngestError(f"{directory}: {exc}") from None
    sync_titles(lake, engine, wait_seconds=wait)
    return reports
