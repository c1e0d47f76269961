"""The package's shape: no import circles (function-level imports included), no oversized
modules, each fact in one place. Read from the source with ast: nothing is imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "recjobs"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Module names an import statement refers to (a name imported from a package may be a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".")
        if path.name != "__init__.py":
            parts = parts[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    return [base, *(f"{base}.{a.name}" for a in node.names)]


def import_graph() -> dict[str, set[str]]:
    """Module -> the recjobs modules it imports anywhere in its body (TYPE_CHECKING and functions too)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(module, path, node):
                while target and target not in modules:  # the deepest module the name refers to
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_finds_a_circle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    source = "def f():\n    from recjobs.b import x\n"
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom))
    assert _targets("recjobs.a", PACKAGE / "a.py", node) == ["recjobs.b", "recjobs.b.x"]


def test_recjobs_has_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_module_is_over_the_size_limit():
    big = {name: n for name, path in _modules().items()
           if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_settings_models_and_errors_stay_light_enough_for_dag_parsing():
    # The DAG files import recjobs.settings when Airflow parses them: it must not reach numpy,
    # pandas, SQLAlchemy or a model family's libraries at import time.
    graph = import_graph()
    seen, todo = set(), ["recjobs.settings"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(graph[module])
    assert seen <= {"recjobs", "recjobs.errors", "recjobs.columns", "recjobs.models.registry",
                    *(m for m in graph if m.startswith("recjobs.settings"))}, sorted(seen)
    assert "recjobs.models.registry" in seen and not graph["recjobs.models.registry"] - {"recjobs.errors"}


def test_errors_module_imports_nothing_from_recjobs():
    assert not import_graph()["recjobs.errors"]


def test_each_fact_has_one_owner():
    """The writers of the ledgers, the lake and run folders, and the id lookups live in their modules only."""
    owners = {
        # model_runs rows are written by the ledger only.
        r"model_runs\.(insert|update|delete)\(": {"recjobs/db/ledger.py"},
        # guard_checks rows are written by the guards' record module only.
        r"guard_checks\.(insert|update|delete)\(": {"recjobs/guard/record.py"},
        # ingest_log rows likewise.
        r"ingest_log\.(insert|update|delete)\(": {"recjobs/ingest/ledger.py"},
        # Only the lake takes the lake's lock.
        r"FileLock\(": {"recjobs/data/lake.py"},
        # Run folders are laid out by recjobs.runs alone.
        r"runs_dir\s*/": {"recjobs/runs.py"},
        # Ids become row numbers through recjobs.data.ids.
        r"get_indexer\(": {"recjobs/data/ids.py"},
        # Model versions are parsed by recjobs.runs.family_of.
        r"model_version[^\n]*split\(\"-\"\)": set(),
        # Write-then-rename lives in recjobs.files.
        r"os\.replace\(": {"recjobs/files.py"},
        # Gate statuses are named in the ledger: no SQL literal or comparison spells them out.
        r"""(IN \(|[=!]=\s*)['"](promoted|champion_kept|no_candidates)['"]""": set(),
    }
    for pattern, allowed in owners.items():
        where = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                 if re.search(pattern, p.read_text(encoding="utf-8"))}
        assert where <= allowed, f"{pattern!r} found outside {sorted(allowed) or 'nowhere'}: {sorted(where - allowed)}"


def test_public_packages_declare_what_they_export():
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent == PACKAGE:
            continue
        tree = ast.parse(init.read_text(encoding="utf-8"))
        names = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert "__all__" in names, f"{init.relative_to(ROOT)} has no __all__"
