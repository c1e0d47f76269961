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

import html
import json
import logging
import math
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
from sqlalchemy.engine import Engine

from recjobs.dashboard.charts import embedding_map_spec, metric_chart_specs, overlap_chart_spec
from recjobs.dashboard.data import (
    ItemLookup,
    UserLookup,
    champion,
    champion_map,
    failed_nights,
    gate_decisions,
    guard_checks,
    ingest_by_date,
    list_overlap,
    lookup_item,
    lookup_user,
    metrics_by_date,
    missing_schema,
    published_versions,
)
from recjobs.data.ids import visible
from recjobs.files import write_text
from recjobs.settings import Settings

log = logging.getLogger(__name__)

DASH = "–"  # shown for a value that was never recorded (NULL), e.g. in rows older than the column
NO_SCHEMA = "no recjobs schema yet: run recjobs initdb"
VEGA_BUNDLE_PATH = "static/vega-embed.js"
# The manual DAG that rolls the live lists back (dags/recs_rollback.py).
ROLLBACK_DAG = "recs_rollback"


def render_no_schema(missing: list[str] | None = None) -> str:
    """The page shown before ``recjobs initdb`` has created the schema."""
    detail = f" (missing: {', '.join(missing)})" if missing else " (no database yet)"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>recjobs</title><style>{STYLE}</style>"
            "</head><body><h1>recjobs: nightly recommendations</h1>"
            f'<div class="card" id="no-schema"><b>{html.escape(NO_SCHEMA)}</b>{html.escape(detail)}</div>'
            "</body></html>")


_bundle: str | None = None
_bundle_lock = threading.Lock()


def vega_embed_bundle(cache: Path | None = None) -> str:
    """vega, vega-lite and vega-embed as one self-contained script (~0.9 MB), built once per process.

    Building takes about 3 s; with ``cache`` (a folder only this user may write: the page
    serves what it reads there) the script is kept in a file named for vl-convert's version
    and read back by later processes in milliseconds.
    """
    global _bundle
    with _bundle_lock:
        if _bundle is None:
            import vl_convert

            path = None if cache is None else cache / f"vega-embed-{vl_convert.__version__}.js"
            if path is not None and path.is_file():
                _bundle = path.read_text(encoding="utf-8")
            else:
                _bundle = vl_convert.javascript_bundle()
                if path is not None:
                    try:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        write_text(path, _bundle)
                    except OSError as exc:  # a read-only home: built again by the next process, served now
                        log.warning("vega bundle not cached at %s: %s", path, exc)
        return _bundle


def warm_up(cache: Path | None = None) -> None:
    """Do a first dashboard request's one-time work ahead of it: import Altair (about 1 s) and
    build or read the vega bundle (:func:`vega_embed_bundle`). The plugin runs it in a thread
    when the API server starts, so the first open is no slower than any other."""
    import altair  # noqa: F401 - imported for its side effect: the charts' first build is then fast

    vega_embed_bundle(cache)


def _airflow(base: str, path: str) -> str:
    """The Airflow UI's URL of ``path`` (already quoted), from the page's own address: the page is
    served at <Airflow>/recjobs/, so this is right under a base path too."""
    return f"{base}../{path}"


def _task_log_link(row: pd.Series, base: str) -> str | None:
    """A link (HTML) to the log of the Airflow task that wrote a gate row, or None outside Airflow."""
    dag, run, task = row.get("airflow_dag_id"), row.get("airflow_run_id"), row.get("airflow_task_id")
    if any(v is None or pd.isna(v) for v in (dag, run, task)):
        return None
    path = "/".join(("dags", quote(str(dag), safe=""), "runs", quote(str(run), safe=""), "tasks",
                     quote(str(task), safe="")))
    e = html.escape
    # The top window: inside the Airflow UI the page is in an iframe.
    return (f'<a class="run-log" href="{e(_airflow(base, path))}" target="_top" '
            f'title="{e(str(dag))} {e(str(run))}">{e(str(task))} log</a>')


def _gate_table(frame: pd.DataFrame, base: str = "") -> pd.DataFrame:
    if frame.empty:
        return frame

    def ci(row: pd.Series) -> str | None:
        lo, hi = row["gate_ci_low"], row["gate_ci_high"]
        return None if pd.isna(lo) or pd.isna(hi) else f"[{lo:+.4f}, {hi:+.4f}]"

    return pd.DataFrame({
        "run_date": frame["run_date"], "family": frame["family"], "status": frame["status"],
        "ndcg_at_k": frame["ndcg_at_k"],
        # Per row: which two candidates the difference compares (first minus second).
        "compared": frame["compared"],
        "difference": frame["gate_diff"].map(lambda v: None if pd.isna(v) else f"{v:+.4f}"),
        "CI of diff": frame.apply(ci, axis=1),
        "p-value": frame["gate_p_value"].map(lambda v: None if pd.isna(v) else f"{v:.3g}"),
        "reason": frame["reason"],
        # HTML (see _table's raw): the run's task log in the Airflow UI.
        "Airflow run": frame.apply(_task_log_link, axis=1, base=base),
    })


def _overlap_table(overlap: pd.DataFrame) -> pd.DataFrame:
    """The overlap by night, newest first, as the page lists it."""
    if overlap.empty:
        return overlap
    return pd.DataFrame({"run_date": overlap["run_date"], "overlap": overlap["overlap"],
                         "threshold": overlap["threshold"], "output guard": overlap["decision"]}).iloc[::-1]


def _versions_table(frame: pd.DataFrame, base: str) -> pd.DataFrame:
    """The published versions, the rollback target of the recommendations linked to the rollback DAG."""
    if frame.empty:
        return frame
    e = html.escape
    url = e(_airflow(base, f"dags/{ROLLBACK_DAG}"))
    # Airflow 3's trigger form cannot be prefilled from a URL: the link opens the DAG, and says
    # what to type (or leave empty) in the form's *version*.
    frame = frame.copy()
    frame["roll back"] = [
        (f'<a class="rollback-link" href="{url}" target="_top" title="Trigger {ROLLBACK_DAG}; its version: '
         f'empty or {e(str(v))}">back to this: trigger {ROLLBACK_DAG}</a> (version empty, or {_show(str(v))})')
        if kind == "recommendations" and state == "rollback target" else None
        for kind, state, v in zip(frame["kind"], frame["state"], frame["model_version"], strict=True)]
    return frame


def _show(text: str) -> str:
    """``text`` as HTML: escaped, its characters that are not printable shown visibly, marked up.

    Ids are shown so that two that differ only by such a character (``zz`` and ``zz`` + NUL)
    look different, and a direction mark in one cannot reorder the page around it.
    """
    if text.isprintable():
        return html.escape(text)
    return "".join(html.escape(c) if c.isprintable() else
                   f'<span class="esc" title="U+{ord(c):04X}">{html.escape(repr(c)[1:-1])}</span>' for c in text)


def _cell(value: Any) -> str:  # noqa: ANN401
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return DASH
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(frame: pd.DataFrame, css_id: str, empty: str = "nothing yet", raw: tuple[str, ...] = ()) -> str:
    """``frame`` as an HTML table; the ``raw`` columns hold HTML the page built itself (links), shown as is."""
    if frame.empty:
        return f'<p id="{css_id}" class="empty">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    as_is = [c in raw for c in frame.columns]
    body = "".join("<tr>" + "".join(f"<td>{v if keep and isinstance(v, str) else _show(_cell(v))}</td>"
                                    for keep, v in zip(as_is, row, strict=True)) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f'<table id="{css_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2rem;color:#1a1a1a;background:#fff}
h1{font-size:1.4rem;margin:0 0 .5rem} h2{font-size:1.1rem;margin:1.4rem 0 .5rem} h3{font-size:1rem;margin:.4rem 0}
.card{border:1px solid #ddd;border-radius:8px;padding:.8rem 1rem;display:inline-block;margin-right:1rem}
.card b{font-size:1.2rem} .charts{display:flex;flex-wrap:wrap;gap:.8rem}
.vchart{border:1px solid #eee;border-radius:6px;background:#fcfcfc;padding:4px;min-width:200px;min-height:120px}
.vchart .loading{display:block;color:#777;font-size:13px;padding:.6rem}
table{border-collapse:collapse;font-size:13px} td,th{border-bottom:1px solid #eee;padding:3px 8px;text-align:left}
form{margin:.5rem 0} input{padding:4px}
.side{display:flex;flex-wrap:wrap;gap:2rem;align-items:flex-start}
.notice{background:#fff4e5;border:1px solid #f0c36d;border-radius:6px;padding:.5rem .8rem;margin:.5rem 0}
.muted{color:#666;font-size:13px} #lookup-result{border-left:4px solid #1f77b4;padding-left:.8rem}
.id,td{white-space:pre-wrap} .esc{font-family:monospace;color:#a00;background:#fdecea}
"""

# Draws every chart whose spec the page carries; until then its box says it is loading, and a
# chart that fails says so in its place.
EMBED_SCRIPT = """
for (const el of document.querySelectorAll('script.chart-spec')) {
  const target = document.getElementById(el.dataset.target);
  vegaEmbed(target, JSON.parse(el.textContent), {actions: false, renderer: 'svg'})
    .then(() => { target.querySelector('.loading')?.remove(); target.classList.add('rendered'); })
    .catch((err) => { target.textContent = 'chart failed: ' + err; target.classList.add('failed'); });
}
"""


def _chart_box(css_id: str, what: str, attrs: str = "") -> str:
    """A chart's box, saying it is loading until the script draws the chart in it."""
    return (f'<div class="vchart" id="{html.escape(css_id)}"{attrs}>'
            f'<span class="loading">Loading {html.escape(what)}…</span></div>')


def _spec_script(target: str, spec: dict[str, Any]) -> str:
    # JSON inside <script>: escape "</" so a title can never close the element.
    text = json.dumps(spec).replace("</", "<\\/")
    return f'<script type="application/json" class="chart-spec" data-target="{target}">{text}</script>'


def _notice(kind: str, message: str, suggestions: list[str], base: str, nothing_close: str = "") -> str:
    """A lookup's notice (``kind``: "user" or "item"): the message, and links to the close ids."""
    e = html.escape
    out = f'<div class="notice" id="{kind}-notice">{_show(message)}'
    if suggestions:
        # Percent-encoded: "a&b=c", "#x" or "1+1" open exactly that id.
        links = ", ".join(f'<a href="{e(base)}?{kind}={e(quote(s, safe=""))}"><span class="id">{_show(s)}</span></a>'
                          for s in suggestions)
        out += f'<br>Did you mean: <span id="{kind}-suggestions">{links}</span>?'
    elif nothing_close:
        out += f"<br>{e(nothing_close)}"
    return out + "</div>"


def _lookup_html(found: UserLookup, base: str) -> str:
    e = html.escape
    out = ['<section id="lookup-result">']
    if found.message:
        out.append(_notice("user", found.message, found.suggestions, base,
                           "" if found.known else "No similar user ids found."))
    out.append('<div class="side">')
    if found.known:
        shown = f" (latest {len(found.history)} of {found.history_total})" if found.history_total > len(
            found.history) else ""
        out.append(f'<div><h3>History of <span class="id">{_show(found.user_id)}</span>{e(shown)}</h3>'
                   + _table(found.history, "user-history", "no history available for this run") + "</div>")
    if found.source == "personal":
        title = f'Recommendations for <span class="id">{_show(found.user_id)}</span>'
        note = "model score: the champion's score, higher is better (comparable within one list only)"
        origin = f"from {found.model_version}, data up to {found.run_date}" if found.model_version else ""
    else:
        title = "Popular items (fallback list)"
        note = "users who interacted: how many users interacted with the item, not a model score"
        origin = f"counted on the data up to {found.run_date}" if found.run_date else ""
    source = f'<p class="muted" id="user-recs-source">{e(origin)}</p>' if origin else ""
    out.append(f'<div><h3>{title}</h3>{source}<p class="muted">{e(note)}</p>'
               + _table(found.recommendations, "user-recs", "no lists published yet") + "</div>")
    out.append("</div></section>")
    return "".join(out)


def _item_html(found: ItemLookup, base: str) -> str:
    e = html.escape
    out = ['<section id="item-result">']
    if found.message:
        out.append(_notice("item", found.message, found.suggestions, base))
    if not found.similar.empty:
        named = f" ({_show(found.title)})" if found.title else ""
        out.append(f'<h3>More like <span class="id">{_show(found.item_id)}</span>{named}</h3>'
                   f'<p class="muted" id="item-source">from {e(found.model_version)}, data up to {e(found.run_date)}; '
                   "similarity: the champion's, higher is more alike (the similar_items table)</p>"
                   + _table(found.similar, "item-similar"))
    out.append("</section>")
    return "".join(out)


def _candidates_html(metrics: pd.DataFrame, day: str | None, base: str) -> str:
    """The candidates of one logical date (``day``, default the latest), and a form to pick another."""
    e = html.escape
    dates = sorted(set(metrics["run_date"].astype(str)), reverse=True)
    shown = day if day in dates else dates[0]
    options = "".join(f"<option value='{e(d)}'{' selected' if d == shown else ''}>{e(d)}</option>" for d in dates)
    out = [f"<h2 id='candidates'>Candidates of {e(shown)}</h2><form method='get' action='{e(base)}#candidates'>"
           f"<select name='date'>{options}</select> <button type='submit'>Show that date</button></form>"]
    if day is not None and day != shown:
        out.append(f'<p class="notice" id="candidates-notice">No candidates for {_show(day)}: '
                   f"showing the latest date, {e(shown)}.</p>")
    out.append(_table(metrics[metrics["run_date"].astype(str) == shown], "latest"))
    return "".join(out)


def render(engine: Engine, user_id: str | None = None, base: str = "", settings: Settings | None = None,
           item_id: str | None = None, candidates_date: str | None = None) -> str:
    """The whole dashboard page as HTML, or the "run recjobs initdb" page without a schema.

    ``base`` is the URL the page is served at (ending in "/"); the vega bundle and the
    map's data are fetched relative to it. ``settings`` locate the run's interactions
    (a user's history) and the item features (the map's genres). ``item_id``: an item
    whose "more like this" list to show; ``candidates_date``: the logical date whose
    candidates to list (default the latest).
    """
    missing = missing_schema(engine)
    if missing:
        return render_no_schema(missing)
    champ = champion(engine)
    metrics = metrics_by_date(engine)
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>recjobs</title><style>{STYLE}</style>"
           "</head><body><h1>recjobs: nightly recommendations</h1>"
           # Relative to the page (served at <Airflow>/recjobs/): right under a base path too; the
           # top window, since inside the Airflow UI the page is in an iframe.
           f"<p class='muted'><a id='dag-link' href='{e(base)}../dags/recs_nightly' target='_top'>"
           "The recs_nightly DAG</a>: its runs, their logs, trigger and backfill.</p>"]
    if champ is None:
        out.append('<div class="card" id="champion">No model published yet.</div>')
    else:
        out.append(f'<div class="card" id="champion">Champion <b>{e(champ.family)}</b><br>'
                   f"{e(champ.model_version)}<br>champion since {e(champ.since)} · "
                   f"live data date {e(champ.run_date)} · published {e(champ.published_at)} UTC</div>")
    # The lookup and its result come first, so the answer is on screen right after submitting.
    out.append(f"<h2 id='lookup'>Look up a user</h2><form method='get' action='{e(base)}'>"
               f"<input name='user' placeholder='user_id' value='{e(visible(user_id or ''))}'> "
               "<button type='submit'>Show history and top-N</button></form>")
    if user_id:
        out.append(_lookup_html(lookup_user(engine, user_id, settings), base))
    out.append(f"<h2 id='item-lookup'>Look up an item</h2><form method='get' action='{e(base)}'>"
               f"<input name='item' placeholder='item_id' value='{e(visible(item_id or ''))}'> "
               "<button type='submit'>Show more like this</button></form>")
    if item_id:
        out.append(_item_html(lookup_item(engine, item_id), base))
    scripts = []
    out.append("<h2>Candidates by logical date</h2><div class='charts'>")
    for column, spec in metric_chart_specs(metrics, failed_nights(engine)).items():
        out.append(_chart_box(f"chart-{column}", "chart", f' data-metric="{e(column)}"'))
        scripts.append(_spec_script(f"chart-{column}", spec))
    out.append("</div>")
    overlap = list_overlap(engine)
    out.append("<h2 id='overlap-heading'>Overlap with the previous night's lists</h2><p class='muted'>Per night: the "
               "mean share of a user's live list that the night's lists kept (the output guard's "
               "<code>overlap</code> check, guard.min_overlap); empty where nothing was live before.</p>")
    if not overlap.empty and overlap["overlap"].notna().any():
        out.append("<div class='charts'>" + _chart_box("chart-overlap", "overlap chart") + "</div>")
        scripts.append(_spec_script("chart-overlap", overlap_chart_spec(overlap)))
    out.append(_table(_overlap_table(overlap), "overlap", "no lists checked yet"))
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
            out.append(_chart_box("embedding-map", f"{len(emap.points)} points",
                                  f' data-points="{len(emap.points)}"'))
            scripts.append(_spec_script("embedding-map", embedding_map_spec(f"{base}api/embedding", emap.explained)))
    out.append("<h2>Gate decisions</h2>" + _table(_gate_table(gate_decisions(engine), base), "gate",
                                                   raw=("Airflow run",)))
    out.append("<h2>Guards: failed checks and allows</h2>"
               + _table(guard_checks(engine), "guards", "no night held or let through"))
    rollback_url = e(_airflow(base, f"dags/{ROLLBACK_DAG}"))
    out.append("<h2>Published versions</h2><p class='muted'>Kept per list (publish.keep_versions). "
               f"The <a id='rollback-dag' href='{rollback_url}' target='_top'>{ROLLBACK_DAG}</a> DAG (Trigger, "
               "<i>version</i> left empty) or <code>recjobs rollback</code> makes the <i>rollback target</i> "
               "live again; each further rollback goes one version back.</p>"
               + _table(_versions_table(published_versions(engine), base), "versions", "nothing published yet",
                        raw=("roll back",)))
    if not metrics.empty:
        out.append(_candidates_html(metrics, candidates_date, base))
    out.append("<h2>Ingest by date</h2>" + _table(ingest_by_date(engine), "ingest"))
    out.append(f'<script src="{e(base)}{VEGA_BUNDLE_PATH}"></script>{"".join(scripts)}<script>{EMBED_SCRIPT}</script>')
    out.append("</body></html>")
    return "".join(out)


__all__ = ["DASH", "NO_SCHEMA", "ROLLBACK_DAG", "VEGA_BUNDLE_PATH", "render", "render_no_schema", "vega_embed_bundle",
           "warm_up"]
