"""The dashboard's data and HTML, independent of any web framework.

The page shows the live champion and since when, each family's metrics over
logical dates as charts, gate decisions with reasons, ingest counts, and a lookup
of one user's recommendations (with titles where item metadata exists). Charts are
inline SVG drawn here, so the page needs no JavaScript or network access.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

PALETTE = {"popularity": "#8c8c8c", "als": "#1f77b4", "lightfm": "#2ca02c", "tfrs": "#d62728"}
METRICS = [("ndcg_at_k", "NDCG@10"), ("precision_at_k", "Precision@10"), ("recall_at_k", "Recall@10"),
           ("map_at_k", "MAP@10"), ("coverage", "Catalogue coverage")]


# What the page reads: the tables, and the live view ``ensure_schema`` creates.
DASHBOARD_TABLES = ("model_runs", "ingest_log", "publications", "popular_items", "items")
DASHBOARD_VIEWS = ("recommendations",)
NO_SCHEMA = "no recjobs schema yet: run recjobs initdb"


def sqlite_file_missing(url: str) -> bool:
    """Whether ``url`` names a SQLite file that does not exist (connecting would create it)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return False
    return not Path(parsed.database).exists()


def missing_schema(engine: Engine) -> list[str]:
    """The tables and views the page reads that are absent; looks only, never creates."""
    inspector = sa.inspect(engine)
    present = set(inspector.get_table_names()) | set(inspector.get_view_names())
    return [name for name in (*DASHBOARD_TABLES, *DASHBOARD_VIEWS) if name not in present]


def render_no_schema(missing: list[str] | None = None) -> str:
    """The page shown before ``recjobs initdb`` has created the schema."""
    detail = f" (missing: {', '.join(missing)})" if missing else " (no database yet)"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>recjobs</title><style>{STYLE}</style>"
            "</head><body><h1>recjobs: nightly recommendations</h1>"
            f'<div class="card" id="no-schema"><b>{html.escape(NO_SCHEMA)}</b>{html.escape(detail)}</div>'
            "</body></html>")


@dataclass(frozen=True)
class Champion:
    family: str
    model_version: str
    run_date: str
    since: str
    published_at: str


def _frame(engine: Engine, sql: str, **params: Any) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(sa.text(sql), params).mappings().all())


def champion(engine: Engine) -> Champion | None:
    """The live model and the first date of its family's unbroken run as champion."""
    live = _frame(engine, "SELECT model_version, run_date, published_at FROM publications "
                          "WHERE kind = 'recommendations' AND is_live = :t", t=True)
    if live.empty:
        return None
    row = live.iloc[0]
    # Only decisions count: a night without candidates leaves the champion as it was.
    gates = _frame(engine, "SELECT run_date, family FROM model_runs WHERE stage = 'gate' AND run_date <= :d "
                           "AND status IN ('promoted', 'champion_kept') ORDER BY run_date DESC", d=row["run_date"])
    family = str(row["model_version"]).split("-")[0]
    since = row["run_date"]
    for _, g in gates.iterrows():
        if g["family"] != family:
            break
        since = g["run_date"]
    return Champion(family, row["model_version"], row["run_date"], since, str(row["published_at"])[:19])


def metrics_by_date(engine: Engine) -> pd.DataFrame:
    return _frame(engine, "SELECT run_date, family, status, ndcg_at_k, precision_at_k, recall_at_k, map_at_k, "
                          "coverage, fit_seconds FROM model_runs WHERE stage = 'candidate' AND status != 'training' "
                          "ORDER BY run_date, family")


def gate_decisions(engine: Engine, limit: int = 30) -> pd.DataFrame:
    return _frame(engine, "SELECT run_date, family, status, ndcg_at_k, reason FROM model_runs "
                          "WHERE stage IN ('gate', 'rollback') ORDER BY run_date DESC, id DESC LIMIT :n", n=limit)


def ingest_by_date(engine: Engine) -> pd.DataFrame:
    # Rejected files (nothing merged) are counted apart, so they stand out.
    frame = _frame(engine, "SELECT ingested_at, kind, COALESCE(status, 'ingested') AS status, rows_read, "
                           "rows_valid, rows_quarantined, duplicates_dropped, source_path FROM ingest_log "
                           "ORDER BY ingested_at")
    if frame.empty:
        return frame
    frame["date"] = pd.to_datetime(frame["ingested_at"], utc=True, format="mixed").dt.strftime("%Y-%m-%d")
    return (frame.groupby(["date", "kind", "status"], as_index=False)
            .agg(files=("source_path", "count"), rows_read=("rows_read", "sum"), rows_valid=("rows_valid", "sum"),
                 rows_quarantined=("rows_quarantined", "sum"), duplicates=("duplicates_dropped", "sum")))


def user_recommendations(engine: Engine, user_id: str, n: int = 20) -> pd.DataFrame:
    """A user's live list with titles; popular items when the user has no list."""
    personal = _frame(engine, "SELECT r.rank, r.item_id, i.title, r.score FROM recommendations r "
                              "LEFT JOIN items i ON i.item_id = r.item_id WHERE r.user_id = :u "
                              "ORDER BY r.rank LIMIT :n", u=user_id, n=n)
    if not personal.empty:
        return personal.assign(source="personal")
    popular = _frame(engine, "SELECT p.rank, p.item_id, i.title, p.score FROM popular_items p "
                             "LEFT JOIN items i ON i.item_id = p.item_id ORDER BY p.rank LIMIT :n", n=n)
    return popular.assign(source="popular (user unknown to the model)")


def line_chart(frame: pd.DataFrame, column: str, title: str, width: int = 460, height: int = 220) -> str:
    """An SVG line chart of ``column`` by run_date, one line per family."""
    e = html.escape
    pad_l, pad_r, pad_t, pad_b = 48, 100, 28, 36
    data = frame.dropna(subset=[column])
    dates = sorted(data["run_date"].unique()) if not data.empty else []
    parts = [f'<svg class="chart" data-metric="{e(column)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{e(title)}">',
             f'<text x="{pad_l}" y="18" class="chart-title">{e(title)}</text>']
    if not dates:
        parts.append(f'<text x="{pad_l}" y="{height // 2}">no data yet</text></svg>')
        return "".join(parts)
    lo, hi = float(data[column].min()), float(data[column].max())
    lo, hi = (lo - 0.05, hi + 0.05) if hi - lo < 1e-9 else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b

    def x(d: str) -> float:
        return pad_l + (plot_w * dates.index(d) / max(len(dates) - 1, 1) if len(dates) > 1 else plot_w / 2)

    def y(v: float) -> float:
        return pad_t + plot_h * (1 - (v - lo) / (hi - lo))

    parts.append(f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{pad_l + plot_w}" y2="{pad_t + plot_h}" class="axis"/>')
    parts.append(f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + plot_h}" class="axis"/>')
    for v in (lo, (lo + hi) / 2, hi):
        parts.append(f'<text x="{pad_l - 4}" y="{y(v) + 4:.1f}" text-anchor="end" class="tick">{v:.3f}</text>')
    for d in (dates[0], dates[-1]) if len(dates) > 1 else dates:
        parts.append(f'<text x="{x(d):.1f}" y="{height - 12}" text-anchor="middle" class="tick">{e(d)}</text>')
    for i, (family, rows) in enumerate(data.groupby("family", sort=True)):
        color = PALETTE.get(family, "#9467bd")
        pts = [(x(d), y(float(v))) for d, v in zip(rows["run_date"], rows[column], strict=True)]
        if len(pts) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for (px, py), v in zip(pts, rows[column], strict=True):
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{color}" data-family="{e(family)}">'
                         f"<title>{e(family)} {float(v):.4f}</title></circle>")
        ly = pad_t + 14 * i + 6
        parts.append(f'<rect x="{width - pad_r + 10}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{width - pad_r + 24}" y="{ly + 1}" class="legend">{e(family)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(frame: pd.DataFrame, css_id: str, floats: int = 4) -> str:
    if frame.empty:
        return f'<p id="{css_id}" class="empty">nothing yet</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for value in row:
            text = f"{value:.{floats}f}" if isinstance(value, float) else ("" if value is None else str(value))
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table id="{css_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1a1a1a;background:#fff}
h1{font-size:1.4rem;margin:0 0 .5rem} h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
.card{border:1px solid #ddd;border-radius:8px;padding:.8rem 1rem;display:inline-block;margin-right:1rem}
.card b{font-size:1.2rem} .charts{display:flex;flex-wrap:wrap;gap:1rem}
.chart{border:1px solid #eee;border-radius:6px;background:#fcfcfc}
.chart-title{font-weight:600;font-size:13px} .tick,.legend{font-size:11px;fill:#555} .axis{stroke:#999}
table{border-collapse:collapse;font-size:13px} td,th{border-bottom:1px solid #eee;padding:3px 8px;text-align:left}
form{margin:.5rem 0} input{padding:4px}
"""


def render(engine: Engine, user_id: str | None = None, base: str = "") -> str:
    """The whole dashboard page as HTML, or the "run recjobs initdb" page without a schema."""
    missing = missing_schema(engine)
    if missing:
        return render_no_schema(missing)
    champ = champion(engine)
    metrics = metrics_by_date(engine)
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>recjobs</title><style>{STYLE}</style>"
           "</head><body><h1>recjobs: nightly recommendations</h1>"]
    if champ is None:
        out.append('<div class="card" id="champion">No model published yet.</div>')
    else:
        out.append(f'<div class="card" id="champion">Champion <b>{e(champ.family)}</b><br>'
                   f"{e(champ.model_version)}<br>champion since {e(champ.since)} · "
                   f"live data date {e(champ.run_date)} · published {e(champ.published_at)} UTC</div>")
    out.append("<h2>Candidates by logical date</h2><div class='charts'>")
    charted = (metrics[metrics["status"] != "failed"] if not metrics.empty
               else pd.DataFrame(columns=["run_date", "family", *(c for c, _ in METRICS)]))
    for column, title in METRICS:
        out.append(line_chart(charted, column, title))
    out.append("</div>")
    out.append("<h2>Gate decisions</h2>" + _table(gate_decisions(engine), "gate"))
    out.append("<h2>Ingest by date</h2>" + _table(ingest_by_date(engine), "ingest", floats=0))
    out.append(f"<h2>Look up a user</h2><form method='get' action='{e(base)}'>"
               f"<input name='user' placeholder='user_id' value='{e(user_id or '')}'> "
               "<button type='submit'>Show top-N</button></form>")
    if user_id:
        out.append(_table(user_recommendations(engine, user_id), "user-recs"))
    if not metrics.empty:
        latest = metrics[metrics["run_date"] == metrics["run_date"].max()]
        out.append("<h2>Latest candidates</h2>" + _table(latest, "latest"))
    out.append("</body></html>")
    return "".join(out)
