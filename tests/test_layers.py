"""The package's layers flow down (docs/design.md): no module imports one of a higher layer, and
no module imports another module's private (_underscore) names. Read from the source with ast,
so an upward import fails here before it can make a cycle."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "svdzip"

# lowest first; a module may import its own layer and those below. A prefix names a package.
LAYERS = [
    ("leaves", ["version", "config", "config_methods", "config_parts", "config_quant", "dtypes", "rank", "report", "paths", "_native", "_reference", "_C", "rope",
                "benchmark", "calibration.adequacy", "pipeline.integrity", "pipeline.outdir", "pipeline.memory",
                "pipeline.budget", "pipeline.group", "pipeline.inplace"]),
    ("ops", ["ops"]),
    ("math", ["nn", "methods", "calibration"]),
    ("pipeline", ["pipeline"]),
    ("allocation", ["allocation"]),
    ("driver", ["driver"]),
    ("api", ["api", "offload", "io", "hf", "meta", "kvcache", "kvcache_layer", "data", "textcache", "eval", "models", "lmeval",
             "plot", "demo", "env", "export"]),
    ("cli", ["cli", "cli_checks", "cli_compress", "cli_run", "cli_lmeval", "cli_plot", "cli_bench", "cli_export", "__main__", ""]),
]


def layer_of(module: str) -> int:
    """The layer of `module` (dotted, without 'svdzip.'): its longest listed prefix."""
    best, depth = None, -1
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".") or n == "") and len(n) > depth:
                best, depth = i, len(n)
    if best is None:
        raise AssertionError(f"svdzip.{module} is in no layer of tests/test_layers.py: add it")
    return best


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, source: str | None = None) -> list[tuple[str, list[str], int]]:
    """(imported svdzip module, names taken from it, line) for each import in the file."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[:len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:  # from . import x: x is a module
                out += [(f"{target}.{a.name}".strip("."), [], node.lineno) for a in node.names]
            else:
                out.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("svdzip"):
            out.append((node.module[len("svdzip."):] if "." in node.module else "", [a.name for a in node.names],
                        node.lineno))
    return out


def violations(path: Path, source: str | None = None) -> list[str]:
    mod = _module(path)
    mine, bad = layer_of(mod), []
    for target, names, line in imports(path, source):
        if layer_of(target) > mine:
            bad.append(f"{path.name}:{line}: svdzip.{mod} ({LAYERS[mine][0]}) imports svdzip.{target} "
                       f"({LAYERS[layer_of(target)][0]})")
        submodules = {p.stem for p in (PACKAGE / target.replace(".", "/")).glob("*.py")}
        private = [n for n in names if n.startswith("_") and n not in submodules and n != "__version__"]
        if private and target != mod:
            bad.append(f"{path.name}:{line}: svdzip.{mod} imports private {private} from svdzip.{target}")
    return bad


FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_down_and_take_no_private_names(path):
    assert violations(path) == []


def test_an_upward_import_is_caught():
    """The check itself can fail: a pipeline module importing the driver, a method importing a
    private name of the pipeline."""
    loop = PACKAGE / "pipeline" / "loop.py"
    assert violations(loop, loop.read_text() + "\nfrom ..driver import run\n")
    svd = PACKAGE / "methods" / "svd.py"
    assert any("private" in v for v in violations(svd, svd.read_text() + "\nfrom ..pipeline.loop import _timed\n"))


def test_calibration_and_pipeline_do_not_import_each_other_both_ways():
    cal = {t for p in (PACKAGE / "calibration").glob("*.py") for t, _, _ in imports(p)}
    assert not any(t.startswith("pipeline") for t in cal)


def test_files_and_functions_stay_small():
    """Files under 300 lines, functions under 60 (the house style; docs/design.md)."""
    long_files = [str(p.relative_to(PACKAGE)) for p in FILES if len(p.read_text().splitlines()) > 300]
    long_functions = [f"{p.relative_to(PACKAGE)}:{n.name}" for p in FILES for n in ast.walk(ast.parse(p.read_text()))
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= 60]
    assert long_files == [] and long_functions == []


def block_visits(path: Path, source: str | None = None) -> list[str]:
    """Calls of `.onload(...)` / `.offload(...)` in a file: a pass that onloads blocks itself
    instead of running on pipeline/walk.visit (the one block loop, docs/design.md)."""
    tree = ast.parse(source if source is not None else path.read_text())
    return [f"{path.name}:{n.lineno}: .{n.func.attr}()" for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("onload", "offload")]


def test_every_pass_visits_blocks_through_the_one_loop():
    walk = PACKAGE / "pipeline" / "walk.py"
    outside = [v for p in FILES if p != walk for v in block_visits(p)]
    assert outside == [] and block_visits(walk)
    trials = PACKAGE / "pipeline" / "trials.py"
    assert block_visits(trials, trials.read_text() + "\ndef f(source):\n    source.onload(0)\n")
