"""The dashboard's gate table names, per row, what its difference compares.

Rows are written as a night writes them: candidates through ``recjobs.db.ledger``, and the
decision by the real gate (``recjobs.pipeline.promote``) on a real SQLite file."""

from __future__ import annotations

import datetime as dt

from recjobs.dashboard import DASH, gate_decisions, render
from recjobs.db import ledger
from recjobs.pipeline import promote
from recjobs.settings import load_settings


def _night(settings, engine, day: str, scores: dict[str, float]) -> None:  # noqa: ANN001
    for family, ndcg in scores.items():
        ledger.record_evaluated(engine, dt.date.fromisoformat(day), family, {
            "model_version": f"{family}-{day.replace('-', '')}-c", "k": 10, "ndcg_at_k": ndcg,
            "precision_at_k": ndcg / 2, "recall_at_k": ndcg, "map_at_k": ndcg / 3})
    promote(settings, engine, day)


def _rows(engine) -> dict[str, tuple[str, str, str | None, float | None]]:  # noqa: ANN001
    frame = gate_decisions(engine)
    return {r.run_date: (r.family, r.status, r.compared if isinstance(r.compared, str) else None,
                         None if r.gate_diff != r.gate_diff else round(r.gate_diff, 4))
            for r in frame.itertuples(index=False)}


def test_each_gate_row_names_what_its_difference_compares(tmp_path, engine):
    settings = load_settings({"home": str(tmp_path / "home"), "families": ["als", "ease", "itemknn"],
                              "gate": {"test": "none", "first_run": "best_mean"}}, environ={})
    _night(settings, engine, "2026-02-01", {"als": 0.10, "ease": 0.12})         # first run: no champion
    _night(settings, engine, "2026-02-02", {"als": 0.09, "ease": 0.12})         # ease defended
    _night(settings, engine, "2026-02-03", {"als": 0.15, "ease": 0.12})         # als beats ease
    _night(settings, engine, "2026-02-04", {"ease": 0.11, "itemknn": 0.10})     # champion als absent
    _night(settings, engine, "2026-02-05", {"ease": 0.11})                      # only the champion
    assert _rows(engine) == {
        "2026-02-01": ("ease", "promoted", "ease vs runner-up als", 0.02),
        # Before: "ease -0.03 vs champion" on ease's own row. The gap is als's, against ease.
        "2026-02-02": ("ease", "champion_kept", "als vs champion ease", -0.03),
        "2026-02-03": ("als", "promoted", "als vs champion ease", 0.03),
        "2026-02-04": ("ease", "promoted", "ease vs runner-up itemknn", 0.01),
        "2026-02-05": ("ease", "champion_kept", None, None),
    }
    page = render(engine)
    table = page[page.index('<table id="gate"'):].split("</table>")[0]
    head = table.split("</thead>")[0]
    assert "<th>compared</th><th>difference</th>" in head and "vs champion" not in head
    rows = {r.split("</td>")[0].removeprefix("<td>"): r for r in table.split("<tr>")[2:]}
    assert "<td>als vs champion ease</td><td>-0.0300</td>" in rows["2026-02-02"]
    assert "<td>ease vs runner-up als</td><td>+0.0200</td>" in rows["2026-02-01"]
    assert f"<td>{DASH}</td><td>{DASH}</td>" in rows["2026-02-05"]


def test_a_first_run_won_by_the_surest_candidate_is_compared_with_the_best_mean(tmp_path, engine):
    settings = load_settings({"home": str(tmp_path / "home"), "families": ["als", "ease"]}, environ={})
    # Written as the gate writes a lower-bound pick: the reference (best mean, no diff of its own)
    # is ease; the winner als is compared with it.
    day = dt.date(2026, 2, 1)
    for family, ndcg in {"als": 0.10, "ease": 0.11}.items():
        ledger.record_evaluated(engine, day, family, {"model_version": f"{family}-v", "k": 10, "ndcg_at_k": ndcg})
    rows = {r.family: r for r in ledger.candidates(engine, day, settings.families)}
    ledger.record_gate(engine, day, {
        rows["als"].id: {"status": ledger.PROMOTED, "gate_diff": -0.01},
        rows["ease"].id: {"status": ledger.REJECTED, "gate_diff": None}},
        {"family": "als", "model_version": "als-v", "status": ledger.PROMOTED, "reason": "lower bound",
         "gate_diff": -0.01})
    assert _rows(engine)["2026-02-01"][2] == "als vs best mean ease"
