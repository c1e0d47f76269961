"""Hostile ids end to end: from a ratings file through a real nightly run to every published list
and the dashboard, on SQLite and PostgreSQL.

Users and items of generated data are renamed to ids made of SQL metacharacters, quotes,
commas and tabs (inside properly quoted CSV fields), leading zeros, right-to-left and
zero-width characters, a 2,000-character id, ``NaN``/``null`` text and spaces around an id;
a Parquet file adds two users that differ only by a trailing NUL (SQLite only: PostgreSQL
text cannot hold NUL). One night of ALS (which publishes similar items too) must publish
every one of them unchanged in ``recommendations``, ``similar_items`` and
``popular_items``, and the dashboard must find each by its exact id and render it escaped:
no raw control or format character, no markup or attribute from an id, and "did you mean"
links that open exactly the suggested id.
"""

from __future__ import annotations

import csv
import unicodedata
import uuid
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from recjobs import columns as C
from recjobs.dashboard import lookup_user, render
from recjobs.data import Lake, SyntheticSpec, generate
from recjobs.pipeline import engine_for, run_pipeline
from recjobs.settings import load_settings

SPEC = SyntheticSpec(n_users=70, n_items=60, mean_interactions=18, days=40, seed=5)
END = SPEC.end.isoformat()
LONG_ID = "L" * 1999 + "!"  # 2,000 characters (needs unbounded id columns on PostgreSQL: defect 13)
HOSTILE = [
    "'; DROP TABLE recommendations; --", 'Robert"); DELETE FROM model_runs; --', "a&b=c", "#hash", "1+1",
    "user+10", "?user=x", "%41", "50%", "<script>alert(1)</script>", '" onmouseover="alert(1)', "it's",
    'say "hi"', "comma,inside", "tab\tinside", "semi;colon", "back\\slash", "007", "7", "0", "-5", "1e3",
    "שלום", "مرحبا", "\u202eevil\u202c", "zero\u200bwidth", "\ufeffbom", "e\u0301", "\u00e9", "NaN", "null",
    "None", "NULL", "true", " pad ", "🎉 emoji", LONG_ID,
]
NUL_USERS = ["zz", "zz\x00"]  # differing only by a trailing NUL (defect 20): the second is refused at ingest


def _write_inbox(inbox: Path, with_nul: bool) -> tuple[list[str], list[str]]:
    """The renamed ratings as a quoted CSV (and the NUL users as Parquet); returns (users, items)."""
    ratings = generate(SPEC)["ratings"]
    users, items = sorted(ratings[C.USER].unique()), sorted(ratings[C.ITEM].unique())
    user_map = dict(zip(users, [*HOSTILE, *users[len(HOSTILE):]], strict=True))
    item_map = dict(zip(items, [*HOSTILE, *items[len(HOSTILE):]], strict=True))
    ratings[C.USER] = ratings[C.USER].map(user_map)
    ratings[C.ITEM] = ratings[C.ITEM].map(item_map)
    seconds = (ratings[C.TIMESTAMP] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    inbox.mkdir(parents=True)
    with open(inbox / "ratings.csv", "w", newline="", encoding="utf-8") as f:
        # Every text field quoted (numbers not): the same file under either CSV quoting rule.
        out = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        out.writerow(C.INTERACTION_COLUMNS)
        for row in zip(ratings[C.USER], ratings[C.ITEM], ratings[C.RATING].astype(float),
                       seconds.astype(int), strict=True):
            out.writerow([str(row[0]), str(row[1]), float(row[2]), int(row[3])])
    all_users = list(ratings[C.USER].unique())
    if with_nul:
        # Each NUL-twin rates a different half of the items, so their lists must differ.
        item_list = list(item_map.values())
        start = int(seconds.min())
        rows = [(user, item, 4.0, start + 60 * k) for u, user in enumerate(NUL_USERS)
                for k, item in enumerate(item_list[u * 12:(u + 1) * 12])]
        frame = pd.DataFrame(rows, columns=list(C.INTERACTION_COLUMNS))
        table = pa.table({C.USER: pa.array(frame[C.USER], pa.string()), C.ITEM: pa.array(frame[C.ITEM], pa.string()),
                          C.RATING: frame[C.RATING], C.TIMESTAMP: frame[C.TIMESTAMP]})
        pq.write_table(table, inbox / "nul_users.parquet")
        all_users += NUL_USERS[:1]  # the NUL twin's rows are quarantined: no database can tell them apart
    return all_users, list(item_map.values())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def night(request, tmp_path_factory):  # noqa: ANN001, ANN201
    """One published night over the hostile ids: (settings, engine, users, items)."""
    home = tmp_path_factory.mktemp(f"ids-{request.param}") / "home"
    # Half the NUL-twins file is refused (a NUL id): let the file in so the other half lands.
    overrides = {"home": str(home), "families": ["als"], "publish": {"top_n": 10, "popular_n": 1000},
                 "ingest": {"max_invalid_share": 0.6}}
    admin = name = None
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        name = f"t_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        overrides["database_url"] = sa.engine.make_url(server).set(database=name).render_as_string(
            hide_password=False)
    settings = load_settings(overrides, environ={})
    users, items = _write_inbox(settings.inbox, with_nul=True)
    run_pipeline(settings, END)
    engine = engine_for(settings)
    yield settings, engine, users, items
    engine.dispose()
    if admin is not None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def _column(engine: sa.Engine, table: str, column: str) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.text(f"SELECT {column} FROM {table}"))]


def test_every_hostile_id_is_published_unchanged(night):
    _, engine, users, items = night
    assert set(_column(engine, "recommendations", "user_id")) == set(users)
    recommended = set(_column(engine, "recommendations", "item_id"))
    assert recommended <= set(items) and set(HOSTILE) & recommended, "hostile items should be recommended"
    assert set(_column(engine, "similar_items", "item_id")) == set(items)
    assert set(_column(engine, "similar_items", "similar_item_id")) <= set(items)
    assert set(_column(engine, "popular_items", "item_id")) == set(items)
    for text in HOSTILE:  # not one id was trimmed, normalised or merged with another
        assert text in users and text in items


def test_an_id_with_a_nul_is_quarantined_and_its_twin_without_gets_its_own_list(night):
    # zz and zz\0 are different ids; PostgreSQL's text cannot store the second, so ingest
    # refuses it on both databases (one rule), naming why, and zz is published alone.
    settings, engine, users, _ = night
    assert "zz\x00" not in users
    with engine.connect() as conn:
        for table, column in (("recommendations", "user_id"), ("recommendations", "item_id"),
                              ("recommendations_history", "user_id")):
            assert not conn.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE {column} LIKE :p"),
                                    {"p": "zz_%"}).scalar()
        listed = [r[0] for r in conn.execute(sa.text(
            "SELECT item_id FROM recommendations WHERE user_id = 'zz' ORDER BY rank"))]
    assert len(listed) == 10
    found = lookup_user(engine, "zz", settings)
    assert found.known and found.source == "personal" and found.history_total == 12
    quarantined = pd.concat([pd.read_parquet(p) for p in Lake.of(settings).quarantine.glob("*.parquet")])
    nul_rows = quarantined[quarantined[C.REASON].str.contains("NUL", regex=False)]
    assert len(nul_rows) == 12 and set(nul_rows[C.USER]) == {"zz\x00"}
    assert (nul_rows[C.REASON] == "user_id contains a NUL character (U+0000)").all()


class _Page(HTMLParser):
    """Tags, attributes and the text of each element with an id, as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.hrefs: list[str] = []
        self.h3: list[str] = []
        self.cells: dict[str, list[list[str]]] = {}
        self._stack: list[str] = []
        self._table: str | None = None
        self._text: list[str] | None = None

    def handle_starttag(self, tag, attrs):  # noqa: ANN001, ANN201
        self.tags.add(tag)
        self.attrs |= {name for name, _ in attrs}
        values = dict(attrs)
        if tag == "a":
            self.hrefs.append(values.get("href") or "")
        if tag == "table":
            self._table = values.get("id")
            self.cells[self._table] = []
        if tag == "tr" and self._table:
            self.cells[self._table].append([])
        if tag in ("h3", "td"):
            self._text = []

    def handle_endtag(self, tag):  # noqa: ANN001, ANN201
        if tag == "h3" and self._text is not None:
            self.h3.append("".join(self._text))
            self._text = None
        if tag == "td" and self._text is not None and self._table:
            self.cells[self._table][-1].append("".join(self._text))
            self._text = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):  # noqa: ANN001, ANN201
        if self._text is not None:
            self._text.append(data)


# The page's own markup (the candidates' date picker, the versions note, the DAG link included):
# a hostile id must not add to it.
TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "div", "b", "br", "form", "input",
        "button", "section", "p", "table", "thead", "tbody", "tr", "th", "td", "a", "span", "script", "code",
        "select", "option", "i"}
ATTRS = {"charset", "class", "id", "method", "action", "name", "placeholder", "value", "type", "href", "src",
         "data-target", "data-metric", "data-points", "title", "selected", "target"}


def _parse(page: str) -> _Page:
    bad = sorted({f"U+{ord(c):04X}" for c in page
                  if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")})
    assert not bad, f"raw control/format characters in the page: {bad}"
    assert "<script>alert" not in page and "onmouseover=" not in page.replace("onmouseover=&quot;", "")
    parsed = _Page()
    parsed.feed(page)
    assert parsed.tags <= TAGS and parsed.attrs <= ATTRS, (parsed.tags - TAGS, parsed.attrs - ATTRS)
    return parsed


def _printable(text: str) -> bool:
    return all(c == " " or c.isprintable() for c in text)


@pytest.mark.slow
def test_the_dashboard_finds_every_hostile_user_and_renders_it_escaped(night):
    settings, engine, users, _ = night
    for user in [u for u in users if u in HOSTILE or u in NUL_USERS]:
        page = render(engine, user_id=user, base="/recjobs/", settings=settings)
        parsed = _parse(page)
        assert "Unknown user" not in page, repr(user)
        title = next(t for t in parsed.h3 if t.startswith("Recommendations for "))
        shown = title.removeprefix("Recommendations for ")
        if _printable(user):
            assert shown == user, (user, shown)
        else:  # shown visibly escaped, and still telling it apart from its printable neighbours
            assert _printable(shown) and shown != user and shown not in users, (user, shown)
        with engine.connect() as conn:
            expected = [r[0] for r in conn.execute(sa.text(
                "SELECT item_id FROM recommendations WHERE user_id = :u ORDER BY rank"), {"u": user})]
        cells = [row[1] for row in parsed.cells["user-recs"] if row]
        assert len(cells) == len(expected) == 10
        for cell, item in zip(cells, expected, strict=True):
            assert cell == item if _printable(item) else (_printable(cell) and cell != item), (item, cell)


def _suggested(page: str) -> list[str]:
    parsed = _parse(page)
    out = []
    for href in parsed.hrefs:
        query = parse_qs(urlsplit(href).query, keep_blank_values=True)
        if "user" not in urlsplit(href).query:  # the page's other links (the DAG, item lookups)
            continue
        assert list(query) == ["user"] and len(query["user"]) == 1, href
        out.append(query["user"][0])
    return out


@pytest.mark.parametrize(("typed", "meant"), [
    ("a&b=cc", "a&b=c"), ("#hashh", "#hash"), ("1+11", "1+1"), ("user+100", "user+10"), ("pad", " pad "),
    ("?user=xx", "?user=x"), ("%411", "%41"), ("'; DROP TABLE recommendations; -", "'; DROP TABLE recommendations; --"),
    ("zero\u200bwidt", "zero\u200bwidth"), (LONG_ID[:-1], LONG_ID),
])
def test_did_you_mean_links_open_exactly_the_suggested_id(night, typed, meant):
    settings, engine, users, _ = night
    found = lookup_user(engine, typed, settings)
    assert not found.known and meant in found.suggestions, (typed, found.suggestions)
    page = render(engine, user_id=typed, base="/recjobs/", settings=settings)
    linked = _suggested(page)
    assert linked == found.suggestions and set(linked) <= set(users)


def test_ids_are_looked_up_exactly_not_trimmed(night):
    # Defect 19: " pad " has a list of its own; "pad" is another (unknown) id.
    settings, engine, _, _ = night
    spaced = lookup_user(engine, " pad ", settings)
    assert spaced.known and spaced.source == "personal" and len(spaced.recommendations) == 10
    assert not lookup_user(engine, "pad", settings).known
    assert not lookup_user(engine, "pad ", settings).known


@pytest.mark.parametrize("typed", ["--5", "²", "12345678901234567890123", "-", "-0", "٣", "1" * 400, "0x1F", " 7"])
def test_numeric_looking_unknown_ids_get_a_page_not_an_error(night, typed):
    # Defect 14: with numeric ids known ("007", "7", "0", "-5"), these used to raise (HTTP 500).
    settings, engine, users, _ = night
    page = render(engine, user_id=typed, base="/recjobs/", settings=settings)
    assert "Unknown user" in page
    assert set(_suggested(page)) <= set(users)
