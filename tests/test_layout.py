"""The shape of the code (issue 9): no import cycles, a CLI that starts without the heavy stack,
Python 3.10 still parses every module, and a notebook-sized Python API.

The import graph is read from the source (ast): every ``import`` a module runs — at the
top or inside a function — is an edge; ``TYPE_CHECKING`` blocks are not. Plug-ins named
by dotted path in a registry (the ``finetuned-`` variant, the Ray engine) are not edges:
that is how a lower layer reaches them without importing them.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "sklearn", "lightgbm", "umap", "ray")


def _modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
            for child in ast.iter_child_nodes(node):
                visit([child])

    visit(tree.body)
    return {m for m in found if m in known and m != name}


def test_the_library_has_no_import_cycles():
    mods = _modules(REPO / "featkit")
    graph = {name: _imports(name, path, set(mods)) for name, path in mods.items()}
    cycles, state, stack = [], {}, []

    def dfs(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_layers_only_import_downward():
    """data -> backbones -> store -> extraction -> embeddings -> heads -> evaluation (+ report rendering)
    -> fit, predict, fine-tune -> explore -> the API -> the demo and the package facade."""
    mods = _modules(REPO / "featkit")
    layer = {"featkit.data": 1, "featkit.backbones": 2, "featkit.store": 3, "featkit.extract": 4,
             "featkit.embeddings": 5, "featkit.heads": 5, "featkit.evaluate": 6, "featkit.modelio": 6,
             "featkit.report": 6, "featkit.fit": 7, "featkit.predict": 7, "featkit.finetune": 7,
             "featkit.explore": 8, "featkit.api": 9, "featkit.demo": 10, "featkit.serve": 10}

    def rank(module: str) -> int:
        if module == "featkit":
            return 11  # the package facade (fk.open ...)
        for prefix, value in sorted(layer.items(), key=lambda kv: -len(kv[0])):
            if module == prefix or module.startswith(prefix + "."):
                return value
        return 0  # errors, paths, config, _version: below everything

    upward = [f"{name} -> {dep}" for name, path in mods.items()
              for dep in _imports(name, path, set(mods)) if rank(dep) > rank(name)]
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


PROBE = """
import json, sys
sys.argv = ["featkit", *json.loads(sys.argv[1])]
from featkit_cli.main import app
try:
    app()
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def _featkit(args: list[str], cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True, cwd=cwd,
                         timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args, code", [
    (["--help"], 0), (["--version"], 0), (["extract", "--help"], 0), (["fit", "--help"], 0),
    (["finetune", "--help"], 0), (["info"], 2), (["extract", "--backbone", "resnet51"], 2),
    (["fit", "--task", "x", "--clf", "xgb"], 2), (["extract", "--tta", "mirror"], 2),
    (["extract", "--engine", "spark"], 2), (["fit", "-t", "x", "--rebalance", "magic"], 2),
    (["extract", "--precision", "fp8"], 2),
])
def test_the_cli_answers_without_importing_the_heavy_stack(tmp_path, args, code):
    result = _featkit(args, tmp_path)
    assert result["code"] == code and result["heavy"] == []


def test_info_on_a_real_store_stays_light(demo_store, tmp_path):
    config, _ = demo_store
    result = _featkit(["info", "--config", str(config.root)], tmp_path)
    assert result["code"] in (0, None) and result["heavy"] == []


def test_every_module_parses_as_python_3_10():
    """The README promises 3.10: no 3.11-only syntax (except*, ...); tomllib falls back to tomli."""
    found = sorted(Path.home().glob(".pyenv/versions/3.10*/bin/python3"))  # pyenv's shim refuses when not selected
    python = found[0] if found else shutil.which("python3.10")
    if python is None:
        pytest.skip("no python3.10 on this machine")
    files = [str(p) for p in (REPO / "featkit").rglob("*.py")] + [str(p) for p in (REPO / "cli").rglob("*.py")]
    out = subprocess.run([str(python), "-c", "import ast, sys\nfor f in sys.argv[1:]: ast.parse(open(f).read(), f)",
                          *files], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    config = REPO / "featkit" / "config.py"
    assert "tomli as tomllib" in config.read_text()


def test_the_python_api_takes_a_notebook_from_extract_to_similar(demo_emb, tmp_path):
    import numpy as np

    import featkit as fk

    col = fk.open(demo_emb.manifest.config.root)
    assert col.tasks == ("form", "glaze", "decoration", "period") and len(col) == 80
    emb = col.extract("mobilenet_v2", progress=False)  # cached: nothing to compute
    assert emb.key == demo_emb.key and emb.X.shape == (80, 1280) and emb.ids.dtype.kind == "U"
    assert list(emb.labels("glaze")) == list(col.labels("glaze")[emb.rows]) and len(emb.groups) == 80
    res = emb.fit("glaze", "logreg", cv=3, params={"C": (0.1,)}, plot=False)
    assert 0 <= res.metrics["balanced_accuracy"] <= 1 and len(res.predictions) == 80
    assert res.run_dir is None and not (col.config.runs_dir / "x").exists()  # nothing written until save()
    run = res.save(tmp_path / "run")
    assert (run / "report.json").is_file() and (run / "model.skops").is_file()
    near = emb.similar(emb.ids[0], k=3)
    assert list(near.columns[:4]) == ["rank", "id", "score", "path"] and emb.ids[0] not in set(near["id"])
    assert near["score"].is_monotonic_decreasing and np.all(near["score"] <= 1.0001)
    predicted = col.predict([col.root / emb.ids[0]], model=run)
    assert predicted["source"][0] == "store" and predicted["glaze"][0] in res.classes
