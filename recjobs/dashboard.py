"""The dashboard's data and HTML, independent of any web framework.

The page shows the live champion and since when, a lookup of one user (their history
beside their recommendations, with titles where item metadata exists), each family's
metrics over logical dates as charts, a 2-D map of the champion's item vectors, gate
decisions with their significance, and ingest counts.

Charts are Vega-Lite specs built with Altair and drawn in the browser by vega-embed,
which the plugin serves itself (``vl_convert.javascript_bundle``): the page loads
nothing from the internet.
"""

from __future__ import annotations

import difflib
import html
import json
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from recjobs import columns as C

if TYPE_CHECKING:
    from recjobs.embedding_map import EmbeddingMap
    from recjobs.interactions import Interactions
    from recjobs.settings import Settings

log = logging.getLogger(__name__)

PALETTE = {"popularity": "#8c8c8c", "als": "#1f77b4", "lightfm": "#2ca02c", "tfrs": "#d62728",
           "ease": "#ff7f0e", "itemknn": "#9467bd"}
# (column, title, bounded): bounded metrics lie in [0, 1], so their axis never goes past 1;
# novelty is self-information in bits and has no such bound.
METRICS = [("ndcg_at_k", "NDCG@k", True), ("precision_at_k", "Precision@k", True),
           ("recall_at_k", "Recall@k", True), ("map_at_k", "MAP@k", True),
           ("coverage", "Catalogue coverage", True), ("diversity", "Intra-list diversity", True),
           ("novelty", "Novelty (bits)", False)]
DASH = "–"  # shown for a value that was never recorded (NULL), e.g. in rows older than the column

# What the page reads: the tables, and the live view ``ensure_schema`` creates.
DASHBOARD_TABLES = ("model_runs", "ingest_log", "publications", "popular_items", "items")
DASHBOARD_VIEWS = ("recommendations",)
NO_SCHEMA = "no recjobs schema yet: run recjobs initdb"
VEGA_BUNDLE_PATH = "static/vega-embed.js"


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


_bundle: str | None = None
_bundle_lock = threading.Lock()


def vega_embed_bundle() -> str:
    """vega, vega-lite and vega-embed as one self-contained script (built once, ~0.9 MB)."""
    global _bundle
    with _bundle_lock:
        if _bundle is None:
            import vl_convert

            _bundle = vl_convert.javascript_bundle()
        return _bundle


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


def metrics_by_date(engine: Engine) -> pd.DataFrame:
    """Every evaluated candidate's metrics by logical date (failed ones included, with their status)."""
    return _frame(engine, "SELECT run_date, family, status, ndcg_at_k, precision_at_k, recall_at_k, map_at_k, "
                          "coverage, diversity, novelty, fit_seconds FROM model_runs "
                          "WHERE stage = 'candidate' AND status != 'training' ORDER BY run_date, family")


def gate_decisions(engine: Engine, limit: int = 30) -> pd.DataFrame:
    """The latest gate and rollback decisions with their significance (NULL where not computed)."""
    return _frame(engine, "SELECT run_date, family, status, ndcg_at_k, gate_diff, gate_ci_low, gate_ci_high, "
                          "gate_p_value, reason FROM model_runs WHERE stage IN ('gate', 'rollback') "
                          "ORDER BY run_date DESC, id DESC LIMIT :n", n=limit)


def _gate_table(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame

    def ci(row: pd.Series) -> str | None:
        lo, hi = row["gate_ci_low"], row["gate_ci_high"]
        return None if pd.isna(lo) or pd.isna(hi) else f"[{lo:+.4f}, {hi:+.4f}]"

    return pd.DataFrame({
        "run_date": frame["run_date"], "family": frame["family"], "status": frame["status"],
        "ndcg_at_k": frame["ndcg_at_k"],
        "diff vs champion": frame["gate_diff"].map(lambda v: None if pd.isna(v) else f"{v:+.4f}"),
        "CI of diff": frame.apply(ci, axis=1),
        "p-value": frame["gate_p_value"].map(lambda v: None if pd.isna(v) else f"{v:.3g}"),
        "reason": frame["reason"],
    })


# -- one user: history beside recommendations ------------------------------------------------
def item_titles(engine: Engine) -> dict[str, str]:
    """Item id -> title from the ``items`` table (empty when no titles were ingested)."""
    frame = _frame(engine, "SELECT item_id, title FROM items")
    return {} if frame.empty else dict(zip(frame[C.ITEM].astype(str), frame[C.TITLE].fillna(""), strict=True))


_matrix_cache: dict[tuple[str, float], Interactions] = {}
_matrix_lock = threading.Lock()


def full_matrix(settings: Settings, run_date: str) -> Interactions | None:
    """The date's full interactions matrix (``runs/<date>/full``), or None when it is gone.

    The last one read is kept: every lookup against the same live date reuses it.
    """
    from recjobs.interactions import Interactions

    path = settings.runs_dir / run_date / "full"
    marker = path / "user_ids.npy"
    if not marker.exists():
        return None
    key = (str(path), marker.stat().st_mtime)
    with _matrix_lock:
        hit = _matrix_cache.get(key)
    if hit is None:
        hit = Interactions.load(path)
        with _matrix_lock:
            _matrix_cache.clear()
            _matrix_cache[key] = hit
    return hit


def close_ids(query: str, known: list[str], n: int = 5) -> list[str]:
    """Up to ``n`` known ids near ``query``: numerically nearest for a number, then by spelling."""
    query = query.strip()
    out: list[str] = []
    if query.lstrip("-").isdigit():
        numeric = pd.to_numeric(pd.Series(known, dtype=object), errors="coerce").dropna()
        if not numeric.empty:
            order = (numeric - int(query)).abs().sort_values(kind="stable")
            out.extend(str(known[i]) for i in order.index[:n])
    for match in difflib.get_close_matches(query, known, n=n, cutoff=0.5):
        if match not in out:
            out.append(match)
    return out[:n]


@dataclass
class UserLookup:
    """What the page shows for one looked-up id."""

    user_id: str
    known: bool  # in the live lists or in the model's data
    recommendations: pd.DataFrame  # rank, item_id, title, and a score column named for what it is
    source: str  # "personal" | "popular"
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    history_total: int = 0
    suggestions: list[str] = field(default_factory=list)
    message: str = ""


def _history(data: Interactions, row: int, titles: dict[str, str], n: int) -> tuple[pd.DataFrame, int]:
    start, end = data.matrix.indptr[row], data.matrix.indptr[row + 1]
    items = data.item_ids[data.matrix.indices[start:end]].astype(str)
    frame = pd.DataFrame({C.ITEM: items, C.TITLE: [titles.get(i, "") for i in items],
                          C.RATING: [f"{v:g}" for v in data.matrix.data[start:end]]})
    if data.pair_seconds is not None:
        seconds = data.pair_seconds[start:end]
        frame["last seen"] = pd.to_datetime(seconds, unit="s", utc=True).strftime("%Y-%m-%d")
        frame = frame.iloc[(-seconds).argsort(kind="stable")]  # newest first
    else:
        frame = frame.iloc[(-data.matrix.data[start:end]).argsort(kind="stable")]  # best rated first
    return frame.head(n).reset_index(drop=True), end - start


def lookup_user(engine: Engine, user_id: str, settings: Settings | None = None, n: int = 20,
                history_n: int = 30) -> UserLookup:
    """One user's live list beside their history; for an unknown id, close known ids and the fallback list."""
    user_id = user_id.strip()
    titles = item_titles(engine)
    champ = champion(engine)
    data = full_matrix(settings, champ.run_date) if settings is not None and champ is not None else None
    history, total = pd.DataFrame(), 0
    row = None
    if data is not None:
        hits = (data.user_ids.astype(str) == user_id).nonzero()[0]
        row = int(hits[0]) if len(hits) else None
        if row is not None:
            history, total = _history(data, row, titles, history_n)
    personal = _frame(engine, "SELECT r.rank, r.item_id, i.title, r.score FROM recommendations r "
                              "LEFT JOIN items i ON i.item_id = r.item_id WHERE r.user_id = :u "
                              "ORDER BY r.rank LIMIT :n", u=user_id, n=n)
    if not personal.empty:
        recs = personal.rename(columns={C.SCORE: "model score"})
        return UserLookup(user_id, True, recs, "personal", history, total)
    popular = _frame(engine, "SELECT p.rank, p.item_id, i.title, p.score FROM popular_items p "
                             "LEFT JOIN items i ON i.item_id = p.item_id ORDER BY p.rank LIMIT :n", n=n)
    if not popular.empty:
        # popular_items.score counts users per item: a count, not comparable with model scores.
        popular[C.SCORE] = popular[C.SCORE].round().astype("int64")
    recs = popular.rename(columns={C.SCORE: "users who interacted"})
    if row is not None:
        return UserLookup(user_id, True, recs, "popular", history, total, message=(
            f"User {user_id!r} is known to the model but has no personal list "
            "(every item already seen?): apps serve the popular items below."))
    known = (data.user_ids.astype(str).tolist() if data is not None else
             _frame(engine, "SELECT DISTINCT user_id FROM recommendations")[C.USER].astype(str).tolist()
             if champ is not None else [])
    suggestions = close_ids(user_id, known)
    return UserLookup(user_id, False, recs, "popular", suggestions=suggestions, message=(
        f"Unknown user {user_id!r}: no such user in the live recommendations or the model's data. "
        "Apps serve such users the popular items below (fallback)."))


# -- charts ---------------------------------------------------------------------------------
def _upper(value: float) -> float:
    """A round axis maximum a little above ``value``, at most 1."""
    if not value > 0:
        return 1.0
    padded = value * 1.1
    step = 10 ** math.floor(math.log10(padded))
    return min(1.0, math.ceil(padded / step) * step)


def metric_chart_spec(frame: pd.DataFrame, column: str, title: str, bounded: bool = True) -> dict[str, Any]:
    """A Vega-Lite line chart of ``column`` over logical dates (a time axis), one line per family.

    Bounded metrics get a y domain from 0 to at most 1; every point shows its date,
    family and value on hover.
    """
    import altair as alt

    data = frame[[C.RUN_DATE, "family", column]].dropna() if column in frame.columns else pd.DataFrame()
    data = (data.rename(columns={C.RUN_DATE: "date"}).astype({column: float})
            if not data.empty else pd.DataFrame({"date": [], "family": [], column: []}))
    if bounded:
        top = _upper(float(data[column].max())) if not data.empty else 1.0
        y_scale = alt.Scale(domain=[0, top], nice=False, clamp=True)
    else:
        y_scale = alt.Scale(zero=False, nice=True)
    families = sorted(data["family"].unique()) if not data.empty else []
    color = alt.Color("family:N", title="family", legend=alt.Legend(orient="bottom"),
                      scale=alt.Scale(domain=families, range=[PALETTE.get(f, "#17becf") for f in families]))
    # ISO dates parsed as UTC midnight and shown in UTC: a viewer west of Greenwich sees the same day.
    x = alt.X("date:T", timeUnit="utcyearmonthdate", title="logical date",
              axis=alt.Axis(format="%b %d", labelAngle=0, labelOverlap=True))
    chart = (alt.Chart(data, title=title)
             .mark_line(point=alt.OverlayMarkDef(filled=True, size=60))
             .encode(x=x, y=alt.Y(f"{column}:Q", title=None, scale=y_scale), color=color,
                     tooltip=[alt.Tooltip("date:T", timeUnit="utcyearmonthdate", format="%Y-%m-%d", title="date"),
                              alt.Tooltip("family:N"), alt.Tooltip(f"{column}:Q", title=title, format=".4f")])
             .properties(width=330, height=170))
    return chart.to_dict()


def metric_chart_specs(metrics: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """One chart spec per metric of :data:`METRICS`, from evaluated (not failed) candidates."""
    charted = (metrics[metrics["status"] != "failed"] if not metrics.empty
               else pd.DataFrame(columns=[C.RUN_DATE, "family", *(c for c, _, _ in METRICS)]))
    return {column: metric_chart_spec(charted, column, title, bounded) for column, title, bounded in METRICS}


def embedding_map_spec(data_url: str, explained: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
    """A Vega-Lite scatter of the map's points, read from ``data_url`` (the ``api/embedding`` route)."""
    import altair as alt

    data = alt.UrlData(url=data_url, format=alt.DataFormat(type="json", property="points"))
    tooltip = [alt.Tooltip(f"{C.TITLE}:N", title="title"), alt.Tooltip("genre:N"),
               alt.Tooltip(f"{C.ITEM}:N", title="item_id")]
    chart = (alt.Chart(data)
             .mark_circle(size=45, opacity=0.75)
             .encode(x=alt.X("x:Q", title=f"component 1 ({explained[0]:.0%} of variance)", axis=alt.Axis(grid=False)),
                     y=alt.Y("y:Q", title=f"component 2 ({explained[1]:.0%} of variance)", axis=alt.Axis(grid=False)),
                     color=alt.Color("genre:N", scale=alt.Scale(scheme="category20"),
                                     legend=alt.Legend(title="genre", symbolLimit=40)),
                     tooltip=tooltip)
             .properties(width=640, height=440)
             .interactive())
    return chart.to_dict()


# -- the champion's item vectors ---------------------------------------------------------------
@dataclass(frozen=True)
class LiveArtifact:
    """Where the live champion's final model should be, and which version is live."""

    path: Path | None
    model_version: str
    run_date: str


def live_artifact(engine: Engine, settings: Settings | None = None) -> LiveArtifact | None:
    """The final model behind the live list (from ``model_runs``' final row), None before a publish."""
    champ = champion(engine)
    if champ is None:
        return None
    finals = _frame(engine, "SELECT model_version, artifact_path FROM model_runs WHERE stage = 'final' "
                            "AND run_date = :d ORDER BY id DESC", d=champ.run_date)
    path = None
    if not finals.empty:
        same = finals[finals["model_version"] == champ.model_version]
        row = (same if not same.empty else finals).iloc[0]
        path = Path(row["artifact_path"]) if row["artifact_path"] else None
    if path is None and settings is not None:
        path = settings.runs_dir / champ.run_date / "final"
    return LiveArtifact(path, champ.model_version, champ.run_date)


def champion_map(engine: Engine, settings: Settings | None = None) -> EmbeddingMap:
    """The embedding map of the live champion; its ``message`` says why there are no points."""
    from recjobs.embedding_map import EmbeddingMap, load_map

    live = live_artifact(engine, settings)
    if live is None:
        return EmbeddingMap("", "", 0, message="no model published yet")
    family = live.model_version.split("-")[0]
    if live.path is None or not (live.path / "meta.json").exists():
        return EmbeddingMap(live.model_version, family, 0, message=(
            f"the champion's model artifact is not available at {live.path or '(no path recorded)'}"))
    return load_map(live.path, item_titles(engine), settings.features_dir if settings is not None else None)


# -- HTML ---------------------------------------------------------------------------------------
def _cell(value: Any) -> str:  # noqa: ANN401
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return DASH
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(frame: pd.DataFrame, css_id: str, empty: str = "nothing yet") -> str:
    if frame.empty:
        return f'<p id="{css_id}" class="empty">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f'<table id="{css_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2rem;color:#1a1a1a;background:#fff}
h1{font-size:1.4rem;margin:0 0 .5rem} h2{font-size:1.1rem;margin:1.4rem 0 .5rem} h3{font-size:1rem;margin:.4rem 0}
.card{border:1px solid #ddd;border-radius:8px;padding:.8rem 1rem;display:inline-block;margin-right:1rem}
.card b{font-size:1.2rem} .charts{display:flex;flex-wrap:wrap;gap:.8rem}
.vchart{border:1px solid #eee;border-radius:6px;background:#fcfcfc;padding:4px;min-width:200px;min-height:120px}
table{border-collapse:collapse;font-size:13px} td,th{border-bottom:1px solid #eee;padding:3px 8px;text-align:left}
form{margin:.5rem 0} input{padding:4px}
.side{display:flex;flex-wrap:wrap;gap:2rem;align-items:flex-start}
.notice{background:#fff4e5;border:1px solid #f0c36d;border-radius:6px;padding:.5rem .8rem;margin:.5rem 0}
.muted{color:#666;font-size:13px} #lookup-result{border-left:4px solid #1f77b4;padding-left:.8rem}
"""

# Draws every chart whose spec the page carries; a chart that fails says so in its place.
EMBED_SCRIPT = """
for (const el of document.querySelectorAll('script.chart-spec')) {
  const target = document.getElementById(el.dataset.target);
  vegaEmbed(target, JSON.parse(el.textContent), {actions: false, renderer: 'svg'})
    .then(() => target.classList.add('rendered'))
    .catch((err) => { target.textContent = 'chart failed: ' + err; target.classList.add('failed'); });
}
"""


def _spec_script(target: str, spec: dict[str, Any]) -> str:
    # JSON inside <script>: escape "</" so a title can never close the element.
    text = json.dumps(spec).replace("</", "<\\/")
    return f'<script type="application/json" class="chart-spec" data-target="{target}">{text}</script>'


def _lookup_html(found: UserLookup, base: str) -> str:
    e = html.escape
    out = ['<section id="lookup-result">']
    if found.message:
        out.append(f'<div class="notice" id="user-notice">{e(found.message)}')
        if found.suggestions:
            links = ", ".join(f'<a href="{e(base)}?user={e(s)}">{e(s)}</a>' for s in found.suggestions)
            out.append(f'<br>Did you mean: <span id="user-suggestions">{links}</span>?')
        elif not found.known:
            out.append("<br>No similar user ids found.")
        out.append("</div>")
    out.append('<div class="side">')
    if found.known:
        shown = f" (latest {len(found.history)} of {found.history_total})" if found.history_total > len(
            found.history) else ""
        out.append(f"<div><h3>History of {e(found.user_id)}{e(shown)}</h3>"
                   + _table(found.history, "user-history", "no history available for this run") + "</div>")
    if found.source == "personal":
        title = f"Recommendations for {e(found.user_id)}"
        note = "model score: the champion's score, higher is better (comparable within one list only)"
    else:
        title = "Popular items (fallback list)"
        note = "users who interacted: how many users interacted with the item, not a model score"
    out.append(f'<div><h3>{title}</h3><p class="muted">{e(note)}</p>'
               + _table(found.recommendations, "user-recs", "no lists published yet") + "</div>")
    out.append("</div></section>")
    return "".join(out)


def render(engine: Engine, user_id: str | None = None, base: str = "", settings: Settings | None = None) -> str:
    """The whole dashboard page as HTML, or the "run recjobs initdb" page without a schema.

    ``base`` is the URL the page is served at (ending in "/"); the vega bundle and the
    map's data are fetched relative to it. ``settings`` locate the run's interactions
    (a user's history) and the item features (the map's genres).
    """
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
    # The lookup and its result come first, so the answer is on screen right after submitting.
    out.append(f"<h2 id='lookup'>Look up a user</h2><form method='get' action='{e(base)}'>"
               f"<input name='user' placeholder='user_id' value='{e(user_id or '')}'> "
               "<button type='submit'>Show history and top-N</button></form>")
    if user_id:
        out.append(_lookup_html(lookup_user(engine, user_id, settings), base))
    scripts = []
    out.append("<h2>Candidates by logical date</h2><div class='charts'>")
    for column, spec in metric_chart_specs(metrics).items():
        out.append(f'<div class="vchart" id="chart-{e(column)}" data-metric="{e(column)}"></div>')
        scripts.append(_spec_script(f"chart-{column}", spec))
    out.append("</div>")
    out.append("<h2>Champion's item embedding</h2>")
    try:
        emap = champion_map(engine, settings)
    except (OSError, ValueError, KeyError) as exc:  # a broken artifact must not take the page down
        log.exception("embedding map failed")
        out.append(f'<p class="notice" id="embedding-message">embedding map unavailable: {e(str(exc))}</p>')
    else:
        if emap.message:
            out.append(f'<p class="notice" id="embedding-message">{e(emap.message.capitalize())}.</p>')
        else:
            sample = f"an evenly spaced {len(emap.points)} of " if len(emap.points) < emap.n_items else ""
            out.append(f'<p class="muted">PCA of the item vectors of {e(emap.model_version)} ({e(emap.family)}): '
                       f"{e(sample)}{emap.n_items} items, coloured by genre; hover for titles, "
                       "scroll to zoom, drag to pan.</p>")
            out.append(f'<div class="vchart" id="embedding-map" data-points="{len(emap.points)}"></div>')
            scripts.append(_spec_script("embedding-map", embedding_map_spec(f"{base}api/embedding", emap.explained)))
    out.append("<h2>Gate decisions</h2>" + _table(_gate_table(gate_decisions(engine)), "gate"))
    if not metrics.empty:
        latest = metrics[metrics["run_date"] == metrics["run_date"].max()]
        out.append("<h2>Latest candidates</h2>" + _table(latest, "latest"))
    out.append("<h2>Ingest by date</h2>" + _table(ingest_by_date(engine), "ingest"))
    out.append(f'<script src="{e(base)}{VEGA_BUNDLE_PATH}"></script>{"".join(scripts)}<script>{EMBED_SCRIPT}</script>')
    out.append("</body></html>")
    return "".join(out)
