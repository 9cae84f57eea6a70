"""The package's layering, read from the source with `ast`: who may import whom."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "convlab"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The convlab modules `path` imports (all of them, or only at module level)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "convlab"}
        elif (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
              and node.module.split(".")[0] == "convlab"):
            # `from convlab.models import layers` may name a submodule
            subs = {f"{node.module}.{a.name}" for a in node.names}
            found |= {s for s in subs if s in MODULES} or {node.module}
    return found


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


@pytest.mark.parametrize("layer", ["convlab.data", "convlab.models"])
def test_data_and_models_never_import_training_the_cli_or_the_package_api(layer):
    bad = {}
    for name, path in MODULES.items():
        if name == layer or name.startswith(layer + "."):
            wrong = {m for m in _imports(path, top_level_only=False)
                     if m == "convlab" or m.startswith(("convlab.training", "convlab.cli"))
                     or m in ("convlab.serving_cli", "convlab.evaluation.cli")}
            if wrong:
                bad[name] = sorted(wrong)
    assert not bad


def test_config_imports_no_tensorflow_or_keras():
    tree = ast.parse(MODULES["convlab.config"].read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"tensorflow", "keras"}
    assert _imports(MODULES["convlab.config"], top_level_only=False) <= {"convlab.errors"}


def test_no_import_cycle_at_module_level():
    graph = {name: {m for m in _imports(path, top_level_only=True) if m in MODULES} - {name}
             for name, path in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                # a package importing its own submodule is how packages work, not a cycle
                if not all(b.startswith(a + ".") or a.startswith(b + ".")
                           for a, b in zip(cycle, cycle[1:], strict=False)):
                    raise AssertionError(" -> ".join(cycle))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_run_folder_file_names_are_spelled_only_in_runs_py():
    names = ("config.json", "state.json", "history.csv", "history.json", "summary.json",
             "summary.txt", "best.keras", "metrics.json", "predictions.npz", "report.html")
    spelled = {}
    for name, path in MODULES.items():
        if name == "convlab.runs":
            continue
        constants = {n.value for n in ast.walk(ast.parse(path.read_text()))
                     if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        hits = [f for f in names if f in constants]  # as a value, not in prose
        if hits:
            spelled[name] = hits
    assert not spelled


def _reads_manifest_by_key(node: ast.AST) -> bool:
    """`manifest[...]` or `manifest.get(...)` on a variable or attribute named *manifest*."""
    def named(n):
        return "manifest" in (n.id if isinstance(n, ast.Name) else
                              n.attr if isinstance(n, ast.Attribute) else "").lower()

    if isinstance(node, ast.Subscript):
        return named(node.value)
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get" and named(node.func.value))


def test_the_manifest_is_spelled_and_read_by_key_only_in_data_manifest_py():
    spelled, by_key = [], {}
    for name, path in MODULES.items():
        if name == "convlab.data.manifest":
            continue
        nodes = list(ast.walk(ast.parse(path.read_text())))
        if any(isinstance(n, ast.Constant) and n.value == "manifest.json" for n in nodes):
            spelled.append(name)  # as a value, not in prose
        if lines := [n.lineno for n in nodes if _reads_manifest_by_key(n)]:
            by_key[name] = lines
    assert not spelled and not by_key


def test_model_names_read_without_keras_are_the_registered_ones():
    from convlab.models import list_models, model_names

    assert model_names() == [info.name for info in list_models()]


# The layers above data and models, lowest first: a module may import its own layer and
# those below it, never one above. The command layer (cli, and the package API in
# convlab/__init__.py) composes them, e.g. "train, then calibrate, then report".
LAYERS = [
    ("training", ("convlab.training",)),
    # Grad-CAM heat maps are part of what a prediction returns (the web page shows them)
    ("prediction", ("convlab.prediction", "convlab.inference", "convlab.evaluation.gradcam")),
    ("evaluation", ("convlab.evaluation",)),
    ("serving", ("convlab.serving", "convlab.webapp", "convlab.classifier")),
    ("commands", ("convlab.cli", "convlab.workflow")),
]


def _layer(module: str) -> int | None:
    if module == "convlab":
        return len(LAYERS) - 1
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def test_no_layer_imports_a_layer_above_it():
    upward = {}
    for name, path in MODULES.items():
        rank = _layer(name)
        if rank is None or name == "convlab":
            continue
        above = {m for m in _imports(path, top_level_only=False)
                 if (r := _layer(m)) is not None and r > rank}
        if above:
            upward[name] = sorted(above)
    assert not upward


def test_no_private_name_is_imported_from_another_module():
    imported = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.ImportFrom) and node.module
                    and node.module.split(".")[0] == "convlab"):
                private = [a.name for a in node.names if a.name.startswith("_")
                           and a.name != "__version__"]
                if private:
                    imported.setdefault(name, []).extend(f"{node.module}.{p}" for p in private)
    assert not imported


MAX_FUNCTION_LINES = 60
# Functions allowed to be longer, each with its reason.
LONG_FUNCTIONS: dict[str, str] = {}


def test_no_function_in_src_is_longer_than_60_lines():
    long = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                where = f"{name}.{node.name}"
                if lines > MAX_FUNCTION_LINES and where not in LONG_FUNCTIONS:
                    long[where] = lines
    assert not long
