"""The dashboard's charts as Vega-Lite specs (built with Altair, drawn in the browser by vega-embed)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from recjobs import columns as C

# One colour per registered family (category10's), so no two lines of a chart share one.
PALETTE = {"popularity": "#8c8c8c", "als": "#1f77b4", "lightfm": "#2ca02c", "tfrs": "#d62728",
           "ease": "#ff7f0e", "itemknn": "#9467bd", "sequence": "#8c564b", "userknn": "#e377c2",
           "ranker": "#bcbd22"}
# The embedding map's genres: 20 colours no two of which look alike (category20's light/dark
# pairs did). Picked from Okabe-Ito's (told apart with colour-blindness too) and other
# distinct sets for the largest smallest CIEDE2000 distance, and ordered so that each next
# colour is the farthest from those before it: the first 8 are at least 27 apart, all 20 at
# least 19 (tests/test_dashboard_ui.py measures it); none is lighter than Okabe-Ito's yellow.
GENRE_PALETTE = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#800000", "#4b0082", "#000000", "#c7c7c7",
                 "#f99379", "#006400", "#2f4f4f", "#808000", "#98df8a", "#e6194b", "#56b4e9", "#f0e442",
                 "#dcbeff", "#848482", "#654522", "#d55e00"]
# (column, title, bounded): bounded metrics lie in [0, 1], so their axis never goes past 1;
# novelty is self-information in bits and has no such bound.
METRICS = [("ndcg_at_k", "NDCG@k", True), ("precision_at_k", "Precision@k", True),
           ("recall_at_k", "Recall@k", True), ("map_at_k", "MAP@k", True),
           ("coverage", "Catalogue coverage", True), ("diversity", "Intra-list diversity", True),
           ("novelty", "Novelty (bits)", False)]


def _upper(value: float) -> float:
    """A round axis maximum a little above ``value``, at most 1."""
    if not value > 0:
        return 1.0
    padded = value * 1.1
    step = 10 ** math.floor(math.log10(padded))
    return min(1.0, math.ceil(padded / step) * step)


FAILED_COLOUR = "#c0392b"


def metric_chart_spec(frame: pd.DataFrame, column: str, title: str, bounded: bool = True,
                      failed: pd.DataFrame | None = None) -> dict[str, Any]:
    """A Vega-Lite line chart of ``column`` by night (one even step per logical date), one line per family.

    Bounded metrics get a y domain from 0 to at most 1; every point shows its date,
    family and value on hover. ``failed`` (run_date, status, reason: see
    :func:`recjobs.dashboard.data.failed_nights`) are marked as dashed red rules, with the
    status and reason on hover.
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
    # Nights as nights: one even step per night that has points or a failure mark, so a lone
    # old night and tonight's do not sit at the two ends of a months-long time axis, and recent
    # nights do not merge into one blob. Labels are the ISO dates read as UTC midnight and shown
    # in UTC: a viewer west of Greenwich sees the same day.
    x = alt.X("date:O", sort="ascending", title="night (logical date)",
              axis=alt.Axis(labelExpr="utcFormat(toDate(datum.value), '%b %d')", labelAngle=0,
                            labelOverlap=True))
    day = alt.Tooltip("date:N", title="date")
    line = (alt.Chart(data)
            .mark_line(point=alt.OverlayMarkDef(filled=True, size=60))
            .encode(x=x, y=alt.Y(f"{column}:Q", title=None, scale=y_scale), color=color,
                    tooltip=[day, alt.Tooltip("family:N"), alt.Tooltip(f"{column}:Q", title=title, format=".4f")]))
    if failed is None or failed.empty:
        return line.properties(title=title, width=330, height=170).to_dict()
    marks = pd.DataFrame({"date": failed[C.RUN_DATE].astype(str), "night": failed["status"].astype(str),
                          "reason": failed["reason"].fillna("").astype(str).str.slice(0, 160)})
    rules = (alt.Chart(marks)
             .mark_rule(color=FAILED_COLOUR, strokeDash=[4, 3], strokeWidth=2)
             .encode(x=x, tooltip=[day, alt.Tooltip("night:N", title="failed night"), alt.Tooltip("reason:N")]))
    heading = alt.TitleParams(title, subtitle="dashed red: a night without a decision (hover for why)",
                              subtitleColor=FAILED_COLOUR)
    return alt.layer(rules, line).properties(title=heading, width=330, height=170).to_dict()


def metric_chart_specs(metrics: pd.DataFrame, failed: pd.DataFrame | None = None) -> dict[str, dict[str, Any]]:
    """One chart spec per metric of :data:`METRICS`, from evaluated (not failed) candidates,
    with ``failed`` nights marked (see :func:`metric_chart_spec`)."""
    charted = (metrics[metrics["status"] != "failed"] if not metrics.empty
               else pd.DataFrame(columns=[C.RUN_DATE, "family", *(c for c, _, _ in METRICS)]))
    return {column: metric_chart_spec(charted, column, title, bounded, failed)
            for column, title, bounded in METRICS}


# The output guard's decisions, as the overlap chart colours them.
DECISION_COLOURS = {"passed": "#1f77b4", "allowed": "#ff7f0e", "not_held": "#8c564b", "held": FAILED_COLOUR}


def overlap_chart_spec(overlap: pd.DataFrame) -> dict[str, Any]:
    """A Vega-Lite chart of each night's list overlap with the lists live before it (one even
    step per night, as the metric charts), its points coloured by the output guard's decision.

    ``overlap``: see :func:`recjobs.dashboard.data.list_overlap`; nights without a value
    (nothing live to compare with) are left out.
    """
    import altair as alt

    data = (overlap.dropna(subset=["overlap"]) if not overlap.empty
            else pd.DataFrame({C.RUN_DATE: [], "overlap": [], "decision": [], "threshold": []}))
    data = pd.DataFrame({"date": data[C.RUN_DATE].astype(str), "overlap": data["overlap"].astype(float),
                         "decision": data["decision"].astype(str), "threshold": data["threshold"].astype(str)})
    decisions = [d for d in DECISION_COLOURS if d in set(data["decision"])]
    x = alt.X("date:O", sort="ascending", title="night (logical date)",
              axis=alt.Axis(labelExpr="utcFormat(toDate(datum.value), '%b %d')", labelAngle=0, labelOverlap=True))
    chart = (alt.Chart(data)
             .mark_line(color="#999")
             .encode(x=x, y=alt.Y("overlap:Q", title=None, scale=alt.Scale(domain=[0, 1], nice=False)),
                     tooltip=[alt.Tooltip("date:N"), alt.Tooltip("overlap:Q", format=".3f"),
                              alt.Tooltip("decision:N", title="output guard"), alt.Tooltip("threshold:N")]))
    points = chart.mark_point(filled=True, size=70).encode(color=alt.Color(
        "decision:N", title="output guard", legend=alt.Legend(orient="bottom"),
        scale=alt.Scale(domain=decisions, range=[DECISION_COLOURS[d] for d in decisions])))
    heading = alt.TitleParams("Overlap with the lists live before (previous night's)",
                              subtitle="mean share of a user's live list kept in the new one")
    return alt.layer(chart, points).properties(title=heading, width=330, height=170).to_dict()


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
                     color=alt.Color("genre:N", scale=alt.Scale(range=GENRE_PALETTE),
                                     legend=alt.Legend(title="genre", symbolLimit=40)),
                     tooltip=tooltip)
             .properties(width=640, height=440)
             .interactive())
    return chart.to_dict()


__all__ = ["DECISION_COLOURS", "FAILED_COLOUR", "GENRE_PALETTE", "METRICS", "PALETTE", "embedding_map_spec",
           "metric_chart_spec", "metric_chart_specs", "overlap_chart_spec"]
