"""``recjobs`` command line: every stage the DAG runs, runnable by hand.

Exit codes: 0 success, 1 a stage failed (message on stderr), 2 bad usage or settings,
3 the run published but one or more model families failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from recjobs.errors import RecjobsError, SettingsError, UsageError
from recjobs.models.registry import FAMILIES
from recjobs.settings import Settings, load_settings

log = logging.getLogger("recjobs")


def parse_set(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as nested overrides (values parsed as JSON where they parse)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip() or any(not part.strip() for part in key.split(".")):
            raise SettingsError(f"--set expects KEY=VALUE with a dotted key, got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        parts = [part.strip() for part in key.split(".")]
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingsError(f"--set {pair!r}: {part} is set to a value and used as a section")
            node = child
        node[parts[-1]] = value
    return out


_parse_set = parse_set  # the name scripts used


def _settings(args: argparse.Namespace) -> Settings:
    overrides = parse_set(args.set or [])
    if getattr(args, "families", None):
        overrides["families"] = [f.strip() for f in args.families.split(",") if f.strip()]
    settings = load_settings(overrides)
    args.loaded_settings = settings  # the error boundary names this database in a database error
    return settings


def _print_sample(settings: Settings, engine, limit: int = 5) -> None:  # noqa: ANN001
    import sqlalchemy as sa

    with engine.connect() as conn:
        total = conn.execute(sa.text("SELECT COUNT(*) FROM recommendations")).scalar_one()
        users = conn.execute(sa.text("SELECT COUNT(DISTINCT user_id) FROM recommendations")).scalar_one()
        first = conn.execute(sa.text("SELECT user_id FROM recommendations ORDER BY user_id LIMIT 1")).scalar()
        rows = conn.execute(
            sa.text("SELECT user_id, item_id, rank, score, model_version FROM recommendations "
                    "WHERE user_id = :u ORDER BY rank LIMIT :n"),
            {"u": first, "n": limit},
        ).all()
    print(f"\nrecommendations: {total} rows for {users} users in {settings.db_url_masked}")
    print(f"data lake: {settings.lake}   models and splits: {settings.runs_dir}")
    print(f"sample (SELECT item_id, score FROM recommendations WHERE user_id = '{first}' ORDER BY rank):")
    for row in rows:
        print(f"  {row.user_id:>8} {row.item_id:>8} rank {row.rank:>2} score {row.score:8.4f} {row.model_version}")


def cmd_demo(args: argparse.Namespace) -> int:
    from recjobs.data.synthetic import SyntheticSpec, write_inbox
    from recjobs.pipeline import engine_for, run_day, run_pipeline

    settings = _settings(args)
    # The sample ends yesterday (UTC) unless --end says otherwise: the nightly DAG's latest
    # scheduled run computes yesterday, so it finds the demo's data. Bad dates (an empty one
    # too) fail before anything is written.
    end = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1) if args.end is None
           else run_day(settings, _named_date("--end", args.end)))
    spec = SyntheticSpec(end=end)
    day = run_day(settings, spec.end if args.date is None else args.date)
    paths = write_inbox(settings.inbox, spec, events=args.events)
    start = spec.end - dt.timedelta(days=spec.days - 1)
    print(f"generated sample data: {', '.join(str(p) for p in paths)}")
    print(f"sample dates: {start} .. {spec.end} (UTC; --end sets the last day)")
    report = run_pipeline(settings, day, isolate=settings.runs.isolate_stages)
    _print_run(report)
    _print_sample(settings, engine_for(settings))
    week = spec.end - dt.timedelta(days=6)
    print(f"\nnightly runs over the sample's last week, in Airflow (each computes its logical date; "
          f"dates older than the live {day} are kept as history only):\n"
          f"  airflow backfill create --dag-id recs_nightly --from-date {week} --to-date {spec.end} "
          "--reprocess-behavior completed")
    return 3 if report.failures else 0


def _named_date(option: str, value: str) -> dt.date:
    """``value`` as a run date (:func:`recjobs.runs.parse_date`), its error naming ``option``."""
    from recjobs.errors import RunDateError
    from recjobs.runs import parse_date

    try:
        return parse_date(value)
    except RunDateError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _print_run(report) -> None:  # noqa: ANN001
    print(f"\nrun {report.run_date}")
    print(f"  {'family':<11}{'prec@k':>8}{'recall':>8}{'ndcg':>8}{'map':>8}{'cover':>8}")
    for family, m in report.candidates.items():
        print(f"  {family:<11}{m.precision:8.4f}{m.recall:8.4f}{m.ndcg:8.4f}{m.map:8.4f}{m.coverage:8.3f}")
    for family, err in report.failures.items():
        print(f"  {family:<11}FAILED: {err}")
    print(f"  gate: {report.decision.reason}")


def cmd_run(args: argparse.Namespace) -> int:
    from recjobs.pipeline import run_pipeline

    settings = _settings(args)
    report = run_pipeline(settings, args.date, ingest=not args.no_ingest, isolate=settings.runs.isolate_stages)
    _print_run(report)
    return 3 if report.failures else 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from recjobs.ingest import import_movielens, ingest_inbox, ingest_path, parse_columns_option
    from recjobs.pipeline import engine_for

    if args.columns:  # same path as --set, so a bad mapping is reported like any setting
        mapping = json.dumps(parse_columns_option(args.columns))
        args.set = [*(args.set or []), f"ingest.columns={mapping}"]
    settings = _settings(args)
    engine = engine_for(settings)
    reports = []
    if args.movielens:
        reports += import_movielens(args.movielens, settings, engine)
    for path in args.paths:
        reports.append(ingest_path(Path(path), settings, engine, force=args.force))
    if not args.paths and not args.movielens:
        reports = ingest_inbox(settings, engine)
        if not reports:
            print(f"inbox {settings.inbox} has no files")
    for r in reports:
        print(r.summary())
        if r.quarantine_path:
            print(f"  quarantined rows: {r.quarantine_path} ({r.reasons})")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from recjobs.pipeline import prepare

    print(prepare(_settings(args), args.date))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from recjobs.pipeline import engine_for, train_candidate, train_final

    settings = _settings(args)
    if args.final:
        print(train_final(settings, engine_for(settings), args.date))
        return 0
    if not args.family:
        raise UsageError("train needs --family NAME or --final")
    print(train_candidate(settings, engine_for(settings), args.date, args.family))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from recjobs.pipeline import engine_for, evaluate_candidate

    settings = _settings(args)
    print(json.dumps(evaluate_candidate(settings, engine_for(settings), args.date, args.family).as_dict()))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from recjobs.pipeline import engine_for, promote

    settings = _settings(args)
    decision = promote(settings, engine_for(settings), args.date)
    print(f"champion: {decision.family} ({'promoted' if decision.promoted else 'kept'}): {decision.reason}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from recjobs.pipeline import engine_for, load_published, publish, rank_shard

    settings = _settings(args)
    if args.shard is not None and args.shard >= settings.publish.shards:
        raise UsageError(f"--shard {args.shard} is not in 0..{settings.publish.shards - 1} "
                         f"(publish.shards = {settings.publish.shards})")
    if args.shard is not None:  # one shard's ranking, as one mapped Airflow task does
        for path in rank_shard(settings, args.date, args.shard):
            print(path)
        return 0
    engine = engine_for(settings)
    results = load_published(settings, engine, args.date) if args.load else publish(settings, engine, args.date)
    for r in results:
        print(f"{r.kind}: {r.rows} rows in {r.table_name} ({'live' if r.live else 'history only'})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from recjobs.pipeline import engine_for
    from recjobs.publish import SwapPolicy, rollback_lists

    settings = _settings(args)
    engine = engine_for(settings)
    # similar_items move only if the last publish made them live (a popularity champion has none);
    # each move is recorded in model_runs by rollback_lists itself.
    for kind, move in rollback_lists(engine, SwapPolicy.of(settings.publish)).items():
        if isinstance(move, str):
            print(f"{kind}: {move}")
        else:
            print(f"{kind}: live view moved from {move[0]} back to {move[1]}")
    return 0


def cmd_initdb(args: argparse.Namespace) -> int:
    from recjobs.pipeline import engine_for

    settings = _settings(args)
    engine_for(settings)
    print(f"schema ready in {settings.db_url_masked}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from recjobs.db import schema_sql

    sys.stdout.write(schema_sql(args.dialect))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from recjobs.data.split import split_events
    from recjobs.pipeline import load_events, run_day, tune

    settings = _settings(args)
    grid = _grid(args.grid, settings, args.family) if args.grid else None
    day = run_day(settings, args.date)
    train, _ = split_events(load_events(settings, day), settings.split)  # the holdout is never looked at
    results = tune(settings, train, args.family, grid)
    print(f"{args.family}: {len(results)} grid points on the training part's inner split (holdout unused)")
    for r in results:
        print(f"  ndcg@{settings.evaluate.k} {r.ndcg:.4f}  P {r.precision:.4f}  R {r.recall:.4f}  "
              f"fit {r.fit_seconds:5.1f}s  {json.dumps(r.params, sort_keys=True)}")
    return 0


def _grid(text: str, settings: Settings, family: str) -> dict[str, list[Any]]:
    """``--grid`` as {parameter: [values]}; a :class:`UsageError` naming what is wrong."""
    try:
        grid = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--grid is not JSON ({exc}): {text[:200]!r}") from None
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise UsageError(f"--grid must be a JSON object of non-empty lists, e.g. '{{\"factors\": [32, 64]}}'; "
                         f"got {text[:200]!r}")
    params = settings.model_params(family)
    known = set(type(params).model_fields)
    unknown = sorted(set(grid) - known)
    if unknown:
        raise UsageError(f"--grid: {family} has no parameter(s) {unknown}; it has {sorted(known)}")
    # Each value as the family's settings would take it, so a bad one fails before any data is read.
    for name, values in grid.items():
        for value in values:
            try:
                type(params).model_validate({**params.model_dump(), name: value})
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                raise UsageError(f"--grid: {family}.{name} = {json.dumps(value)[:200]}: {reason}") from None
    return grid


def cmd_guard(args: argparse.Namespace) -> int:
    from recjobs.guard import STAGES, allow, check_input, checks_of
    from recjobs.pipeline import engine_for, run_day

    settings = _settings(args)
    day = run_day(settings, args.date)  # a bad date (or note) fails before the database is opened
    if args.action == "allow" and args.note and ("\x00" in args.note or len(args.note) > 2000):
        raise UsageError("--note must be text of at most 2,000 characters without NUL")
    engine = engine_for(settings)
    if args.action == "allow":
        stages = STAGES if args.stage == "all" else (args.stage,)
        allow(settings, engine, day, stages, args.note or "")
        print(f"{day}: let through the {' and '.join(stages)} guard(s); rerun the night "
              f"(`recjobs run --date {day}`, or clear the DAG run's tasks) to publish it")
        return 0
    if args.action == "check":
        outcome = check_input(settings, engine, day)  # a held night raises: one line, exit 1
        print(outcome.reason)
    rows = checks_of(engine, day)
    if not rows:
        print(f"{day}: no guard checks recorded")
    for r in rows:
        value = "-" if r.value is None else f"{r.value:.4g}"
        print(f"{r.stage:<7}{r.check_name:<19}{value:>10}  {'ok  ' if r.passed else 'FAIL'}  {r.decision:<8}"
              f"{r.threshold or ''}{f' ({r.note})' if r.note else ''}")
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    settings = _settings(args)
    shown = settings.model_dump(mode="json")
    if settings.database_url is not None:
        shown["database_url"] = settings.db_url_masked  # printed output lands in logs
    print(json.dumps(shown, indent=2))
    return 0


def _family(value: str) -> str:
    """``--family``: a registered model family (argparse turns the error into a usage line)."""
    if value not in FAMILIES:
        raise argparse.ArgumentTypeError(f"unknown model family {value!r}; known: {', '.join(FAMILIES)}")
    return value


def _shard(value: str) -> int:
    """``--shard``: a shard number, 0 or more (its upper bound is publish.shards, checked with the settings)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a shard number: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"shard numbers start at 0, got {value!r}")
    return number


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (exit 2), not a usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The ``recjobs`` argument parser, one subcommand per stage."""
    parser = _Parser(prog="recjobs", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common = _Parser(add_help=False)
    common.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a setting, e.g. --set models.als.factors=128 (repeatable)")
    dated = _Parser(add_help=False)
    dated.add_argument("--date", required=True, help="logical date YYYY-MM-DD")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", parents=[common], help="generate sample data and run the whole pipeline")
    p.add_argument("--date", help="logical date (default: the sample's last day)")
    p.add_argument("--end", help="the sample's last day YYYY-MM-DD (default: yesterday, UTC)")
    p.add_argument("--events", action="store_true",
                   help="generate an event log (view, click, add_to_cart, purchase, dislike, return) instead of "
                        "ratings; weighted as the feedback settings say")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("run", parents=[common, dated], help="the whole pipeline for one date, as the DAG runs it")
    p.add_argument("--families", help="comma-separated subset of model families")
    p.add_argument("--no-ingest", action="store_true", help="skip ingesting the inbox")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("ingest", parents=[common], help="ingest rating/feature files (default: the inbox)")
    p.add_argument("paths", nargs="*")
    p.add_argument("--movielens", metavar="DIR", help="a MovieLens 100k folder (u.data, u.item, u.user)")
    p.add_argument("--force", action="store_true",
                   help="read and validate again content ingested or rejected before (rejected content is "
                        "rejected again unless the settings that rejected it changed)")
    p.add_argument("--columns", metavar="CANONICAL=NAME,...",
                   help="rating files' column names, e.g. user_id=customer,item_id=sku "
                        "(setting ingest.columns)")
    p.set_defaults(func=cmd_ingest)
    p = sub.add_parser("split", parents=[common, dated], help="write the temporal holdout split")
    p.set_defaults(func=cmd_split)
    p = sub.add_parser("train", parents=[common, dated], help="train a candidate, or the champion with --final")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--family", type=_family)
    what.add_argument("--final", action="store_true")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", parents=[common, dated], help="evaluate a candidate on the holdout")
    p.add_argument("--family", required=True, type=_family)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("promote", parents=[common, dated], help="gate: choose the champion")
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("publish", parents=[common, dated], help="score all users and publish to SQL")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--shard", type=_shard, metavar="N",
                      help="only rank shard N of publish.shards to its staging file (no database)")
    step.add_argument("--load", action="store_true", help="only load the ranked shards and swap them live")
    p.set_defaults(func=cmd_publish)
    p = sub.add_parser("rollback", parents=[common], help="repoint live lists to the previous version")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("initdb", parents=[common], help="create the schema")
    p.set_defaults(func=cmd_initdb)
    p = sub.add_parser("schema", help="print the DDL")
    p.add_argument("--dialect", choices=["sqlite", "postgresql"], default="sqlite")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("tune", parents=[common, dated], help="grid search on the training part only")
    p.add_argument("--family", required=True, type=_family)
    p.add_argument("--grid", help='JSON grid, e.g. \'{"factors": [32, 64]}\' (default: the documented grid)')
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("guard", parents=[common, dated],
                       help="the guards of a date: show their checks, run the input guard, or let the night through")
    p.add_argument("action", nargs="?", choices=["show", "check", "allow"], default="show",
                   help="show (default): the recorded checks; check: run the input guard now; allow: let the date "
                        "through")
    p.add_argument("--stage", choices=["input", "output", "all"], default="all", help="allow: which guard (default all)")
    p.add_argument("--note", help="allow: why (recorded with the allow)")
    p.set_defaults(func=cmd_guard)
    p = sub.add_parser("settings", parents=[common], help="print the effective settings")
    p.set_defaults(func=cmd_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; the one error boundary of the command line.

    A recjobs error, a settings error or a bad argument is one line on stderr naming the
    bad value, and a non-zero exit (2 usage or settings, 1 a stage failed); never a
    traceback. Anything else is a bug: one line too, and its traceback with ``-v``.
    """
    parser = build_parser()
    command = "recjobs"
    args = None
    try:
        args = parser.parse_args(argv)
        command = f"recjobs {args.command}"
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        return args.func(args)
    except RecjobsError as exc:
        print(f"{command}: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the boundary: a bug is reported in one line, not hidden
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            log.exception("%s failed", command)
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):  # the database went away, or refused a statement, mid-command
            print(f"{command}: {_database_error(exc, getattr(args, 'loaded_settings', None))}", file=sys.stderr)
            return 1
        print(f"{command}: unexpected {type(exc).__name__}: {_one_line(exc)} (run with -v for the traceback)",
              file=sys.stderr)
        return 1


def _database_error(exc: BaseException, settings: Settings | None) -> str:
    """A database error in one line: the database (masked), the driver's error class and first line.

    Never the statement and its parameters (SQLAlchemy appends both), nor the password.
    """
    from sqlalchemy.engine import make_url

    cause = getattr(exc, "orig", None) or exc
    lines = [line for line in str(cause).splitlines() if line.strip()]
    text = f"{type(cause).__name__}: {lines[0].strip() if lines else ''}"
    if settings is None:
        return f"recommendations database: {text}"
    password = make_url(settings.db_url).password if settings.database_url else None
    if password:
        from urllib.parse import quote

        for form in {str(password), quote(str(password), safe="")}:
            text = text.replace(form, "***")
    return f"recommendations database {settings.db_url_masked}: {text}"


def _one_line(exc: BaseException) -> str:
    # Settings errors list each bad key on its own line; the CLI's answer stays one line.
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
