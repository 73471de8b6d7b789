"""The package's shape, read from its source: imports run one way along the pipeline, none
hides inside a function without a reason, the modules of a package import each other
without cycles, one package spells a run's files, modules stay readable in one sitting.
docs/architecture.md draws the same map."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "llmscratch"

# Lowest first: a module may import from its own layer and the layers above it in this list.
LAYERS = [
    {"errors", "io", "config", "distributed", "progress"},  # what every stage needs, once
    {"tokenizer"},
    {"data"},
    {"model"},
    {"runs"},
    {"training"},
    {"generation"},
    {"evaluation"},
    {"recipes"},
    {"serving"},
    {"cli", "__main__"},
]

# Imports inside a function, each with its reason. Anything else belongs at the top.
LATE_IMPORTS = {
    # A command imports the stage it runs when it runs: `llmscratch tokenizer ...` starts
    # without torch (tests/test_cli.py checks it).
    "cli/*": "any",
    # Optional dependencies, needed by one feature (their extra may not be installed).
    "data/documents.py": {"pyarrow.parquet"},
    "runs/hf_import.py": {"huggingface_hub"},
}

# A run directory's files: only runs/ may spell them (docstrings aside).
RUN_FILE_NAMES = ("config.yaml", "run.json", "metrics.jsonl", "checkpoints", "report.md",
                  "samples.md", "loss.png", "training.png", "optimizer.pt", "state.json")
MAX_LINES = 600


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def layer_of(path: Path) -> int:
    parts = path.relative_to(PACKAGE).parts
    name = parts[0].removesuffix(".py")
    if name == "__init__":
        return len(LAYERS)  # the package's own __init__ imports nothing
    return next(i for i, names in enumerate(LAYERS) if name in names)


def imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    return []


def top_level(module: str) -> str:
    return module.split(".")[1] if module.startswith("llmscratch.") else ""


def test_imports_run_one_way_along_the_pipeline():
    backwards = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            for module in imported(node):
                if module.startswith("llmscratch.") and (
                        layer_of(PACKAGE / (top_level(module) + ".py")) > layer_of(path)):
                    backwards.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not backwards, f"imports against the pipeline: {backwards}"


def late_imports(tree: ast.AST) -> list[str]:
    """Modules imported inside functions (not at the top of the file)."""
    found = []
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                found += imported(node)
    return found


def test_no_import_hides_in_a_function_without_a_reason():
    hidden = []
    for path in modules():
        rel = path.relative_to(PACKAGE).as_posix()
        allowed = LATE_IMPORTS.get(rel, LATE_IMPORTS.get(rel.split("/")[0] + "/*", set()))
        if allowed != "any":
            hidden += [f"{rel}: {m}" for m in late_imports(ast.parse(path.read_text()))
                       if m not in allowed]
    assert not hidden, f"imports inside functions (move them to the top): {hidden}"


def imported_modules(path: Path) -> set[Path]:
    """The files of the package that `path` imports, anywhere in it (inside functions too).

    `from llmscratch.tokenizer import fast_path` imports the module fast_path.py;
    `from llmscratch.tokenizer import Tokenizer` the package's __init__.py.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [alias.name for alias in node.names] if isinstance(node, ast.ImportFrom) else []
        for module in imported(node):
            if not module.startswith("llmscratch."):
                continue
            base = PACKAGE.joinpath(*module.split(".")[1:])
            if base.with_suffix(".py").is_file():
                found.add(base.with_suffix(".py"))
            elif base.is_dir():
                submodules = [base / f"{name}.py" for name in names]
                found |= {m for m in submodules if m.is_file()} or {base / "__init__.py"}
    return found


def import_cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    """Cycles in a graph of imports (module -> modules it imports), each found once."""
    cycles, done = [], set()

    def visit(module: Path, path: list[Path]) -> None:
        if module in path:
            cycles.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return cycles


def test_no_package_has_an_import_cycle():
    """Within a package (tokenizer/, data/, ...) modules import each other one way, so each
    can be read, and imported, after the ones it needs."""
    graph = {path: {m for m in imported_modules(path) if m.parent == path.parent}
             for path in modules()}
    cycles = [" -> ".join(str(m.relative_to(PACKAGE)) for m in cycle)
              for cycle in import_cycles(graph)]
    assert not cycles, f"import cycles: {cycles}"


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def spells(text: str, name: str) -> bool:
    """Whether `text` names the file `name`: "config.yaml" anywhere, a folder such as
    "checkpoints" as a path ("checkpoints/latest") or alone (not the English word)."""
    if "." in name:
        return name in text
    return text == name or f"{name}/" in text or f"/{name}" in text


def test_only_runs_spells_the_files_of_a_run():
    spelled = []
    for path in modules():
        if path.relative_to(PACKAGE).parts[0] == "runs":
            continue
        tree = ast.parse(path.read_text())
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    id(node) not in skip):
                spelled += [f"{path.relative_to(PACKAGE)}: {name}" for name in RUN_FILE_NAMES
                            if spells(node.value, name)]
    assert not spelled, f"run files named outside runs/ (ask runs.run.Run): {spelled}"


def test_modules_stay_readable_in_one_sitting():
    long = {str(p.relative_to(PACKAGE)): n for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checks_above_can_fail():
    """Each check, given code that breaks its rule, says so."""
    backwards = ast.parse("from llmscratch.training.loop import Trainer")
    assert [top_level(m) for n in ast.walk(backwards) for m in imported(n)] == ["training"]
    assert layer_of(PACKAGE / "training.py") > layer_of(PACKAGE / "model" / "config.py")
    assert spells("checkpoints/latest", "checkpoints") and spells("a/config.yaml", "config.yaml")
    assert not spells("convert model checkpoints", "checkpoints")
    a, b, c = Path("a.py"), Path("b.py"), Path("c.py")
    assert import_cycles({a: {b}, b: {c}, c: {a}}) == [[a, b, c, a]]
    assert import_cycles({a: {b, c}, b: {c}, c: set()}) == []
    hidden = ast.parse("def f():\n    import torch\n")
    assert late_imports(hidden) == ["torch"]
    assert late_imports(ast.parse("import torch\n")) == []
