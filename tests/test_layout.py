"""The shape of ``core``: packages by concept, imports going one way, no cycles.

Read from the source with ``ast`` (nothing is imported), so a violation names the file and line.
The layers are the ones the README's "where things live" table and ARCHITECTURE.md describe: a
module may import its own package and the packages *below* it, never one above.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"

# Lowest first. Top-level modules (config, errors, util) sit below every package.
LAYERS = ["store", "ingest", "accounts", "clinical", "evaluation", "adapters", "generation",
          "learning", "feedback", "studies", "cli"]
BASE = {"config", "errors", "util"}

# Libraries a function may import on first use (each import says why in a comment nearby):
# they take seconds to import or pull in a GPU stack, and most commands never need them.
HEAVY = {"torch", "transformers", "peft", "trl", "datasets", "vllm", "accelerate", "safetensors",
         "gguf", "sklearn", "scipy", "statsmodels", "pandas", "plotly", "numpy", "rouge_score",
         "sacrebleu", "bert_score", "sentence_transformers", "duckdb", "bcrypt", "tqdm",
         "streamlit"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path):
    """(target module, line, is_module_level) for every ``core`` import in one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".")
                if path.name != "__init__.py":
                    pkg = pkg[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "core" and target in MODULES and target != "core":
                yield target, node.lineno, id(node) in top


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "core"


def test_every_package_is_a_known_layer_with_a_docstring():
    packages = {p.parent.name for p in CORE.glob("*/__init__.py")}
    assert packages == set(LAYERS)
    for package in LAYERS:
        doc = ast.get_docstring(ast.parse((CORE / package / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"core/{package}/__init__.py: say what it owns and may import"


def test_core_imports_are_module_level():
    """Our own modules are imported at the top of a module; only heavy libraries are deferred."""
    local = [f"{MODULES[name].relative_to(ROOT)}:{line} imports {target} inside a function"
             for name, path in MODULES.items()
             for target, line, top in _imports(name, path) if not top]
    assert local == []


def test_imports_go_down_the_layers():
    order = {layer: i for i, layer in enumerate(LAYERS)}
    upward = []
    for name, path in MODULES.items():
        src = _layer(name)
        for target, line, _ in _imports(name, path):
            dst = _layer(target)
            if dst in BASE or dst == src or src in ("__main__", "core"):
                continue
            if src in BASE or order[dst] > order[src]:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {src} imports {target}")
    assert upward == []


def test_no_import_cycle_between_modules():
    graph = defaultdict(set)
    for name, path in MODULES.items():
        for target, _, _ in _imports(name, path):
            if target != name:
                graph[name].add(target)
    # Tarjan's strongly connected components: any component of size > 1 is a cycle.
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(MODULES):
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_probing_of_our_own_modules():
    """No ``getattr(module, ...)`` guessing or ``inspect.signature`` branching on our own code."""
    found = []
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        for needle in ("inspect.signature", "getattr(sft", "getattr(core", "importlib.import_module(\"core"):
            if needle in text:
                found.append(f"{path.relative_to(ROOT)}: {needle}")
    assert found == []


FUNCTION_LINES = 80
MODULE_LINES = 600
# Declarative tables (vocabularies, parser definitions) may be long; each entry says why.
LONG_ALLOWED: dict[str, str] = {}


@pytest.mark.parametrize("limit", [FUNCTION_LINES])
def test_functions_are_short(limit):
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                key = f"{name}.{node.name}"
                if lines > limit and key not in LONG_ALLOWED:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_modules_are_small():
    big = [f"{p.relative_to(ROOT)} ({n} lines)" for p in MODULES.values()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MODULE_LINES
           and str(p.relative_to(ROOT)) not in LONG_ALLOWED]
    assert big == []


def _docstring_modules(package: str) -> set[str]:
    """Module names listed under "Modules:" in a package docstring (first word of each line)."""
    doc = ast.get_docstring(ast.parse((CORE / package / "__init__.py").read_text())) or ""
    names, inside = set(), False
    for line in doc.splitlines():
        if line.strip().startswith("Modules:"):
            inside = True
            continue
        if inside:
            if not line.strip() or not line.startswith("    "):
                if names:
                    break
                continue
            if not line.startswith("     "):  # a continuation line is indented further
                names.add(line.split()[0])
    return names


@pytest.mark.parametrize("package", LAYERS)
def test_each_package_docstring_lists_its_modules(package):
    actual = {p.stem for p in (CORE / package).glob("*.py") if p.stem != "__init__"}
    assert _docstring_modules(package) == actual


def test_the_readme_table_names_every_package_and_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Where things live", 1)[1].split("\n## ", 1)[0]
    for package in LAYERS:
        assert f"`core/{package}/`" in section, package
        for module in (CORE / package).glob("*.py"):
            if module.stem != "__init__":
                assert f"`{module.stem}`" in section, f"core/{package}/{module.name}"


def test_deferred_imports_are_heavy_libraries_and_say_why():
    """Inside a function only a third-party library is imported, and each module says why it
    defers it (a comment on one of its imports of that library); the standard library is
    imported at the top."""
    import sys

    problems = []
    for name, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        tree = ast.parse(source)
        top = {id(n) for n in tree.body}
        for n in tree.body:
            if isinstance(n, (ast.If, ast.Try)):
                top |= {id(x) for x in ast.walk(n)}
        reasons: dict[str, bool] = {}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in top:
                continue
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            root = (module or "").split(".")[0]
            if root in ("core", "__future__", "") or getattr(node, "level", 0):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if root in sys.stdlib_module_names:
                problems.append(f"{where} imports the standard library's {module} in a function")
                continue
            said = "#" in "\n".join(lines[node.lineno - 1:node.end_lineno])
            reasons[root] = reasons.get(root, False) or said
        problems += [f"{path.relative_to(ROOT)}: defers {root} without saying why"
                     for root, said in reasons.items() if not said]
    assert problems == []
