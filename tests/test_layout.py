"""The import rules of the layout, read from the source (ast), so the packages stay what the README says they are:

    (each folder installs under the name PACKAGES gives it: data/ as segicl_data, and so on)
    weights/     the shipped tiny weights (package data) and their paths: imports nothing of the project
    data/        datasets, I/O, preprocessing, transforms, episodes rules, metrics: imports nothing of the project
    segicl/      the SegICL engine          } each imports data/ and weights/ only (and itself); segicl's package
    mvg_head/    the MVG engine             } init re-exports MVGPipeline (`from segicl import MVGPipeline`)
    benchmarks/  `segicl bench ...`: imports the engines, data/ and the training stages, never the command line
    stages/      the accelerate entry points and the training loop: imports the engines, data/ and the command
                 line's argument checks (segicl_commands.arguments); neither data/ nor an engine imports them
    commands/    the `segicl` command line: registers the engines' and the benchmarks' subcommands; the demo's
                 from-scratch path calls the training stages; nothing but the stages' argument checks imports it

Every import counts, also one inside a function: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest



REPO = Path(__file__).resolve().parents[1]
# Repository folder -> the name it is installed under (pyproject.toml's package-dir): the engines keep their names,
# the other folders get a `segicl_` prefix so that nothing generic lands in site-packages.
PACKAGES = {"data": "segicl_data", "segicl": "segicl", "mvg_head": "mvg_head", "commands": "segicl_commands",
            "benchmarks": "segicl_benchmarks", "stages": "segicl_stages", "weights": "segicl_weights"}
# Which project packages (or single modules) each package may import, besides itself.
ALLOWED = {
    "segicl_weights": set(),
    "segicl_data": set(),
    "segicl": {"segicl_data", "segicl_weights"},
    "mvg_head": {"segicl_data", "segicl_weights"},
    "segicl_benchmarks": {"segicl_data", "segicl", "mvg_head", "segicl_stages", "segicl_weights"},
    "segicl_stages": {"segicl_data", "segicl", "mvg_head", "segicl_commands.arguments"},
    "segicl_commands": {"segicl_data", "segicl", "mvg_head", "segicl_benchmarks", "segicl_stages", "segicl_weights"},
}
# Single modules with a wider allowance: `from segicl import SegICLPipeline, MVGPipeline` (the package's front door).
ALLOWED_MODULES = {"segicl": {"mvg_head.pipeline"}}


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    parts[0] = PACKAGES[parts[0]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = REPO) -> dict[str, Path]:
    return {module_name(path, root): path for folder in PACKAGES for path in sorted((root / folder).rglob("*.py"))}


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name an import statement of the file names (relative imports resolved), with `from X import y`
    giving both X and X.y (y may be a submodule)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    modules = project_modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(path, module):
            while name and name not in modules:  # `import a.b.c` of a package: the longest project prefix
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        package = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            allowed = ALLOWED[package] | ALLOWED_MODULES.get(module, set())
            if other != package and other not in allowed and target not in allowed:
                problems.append(f"{module} imports {target} ({package} may import only "
                                f"{', '.join(sorted(ALLOWED[package])) or 'nothing of the project'})")
    return problems


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_packages_import_only_what_their_layer_may():
    assert forbidden_imports(import_graph()) == []


def test_the_rules_catch_a_forbidden_import_and_a_cycle(tmp_path):
    """The checker itself, on a tree written here: data importing an engine, and a cycle, are both found."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "data" / "io.py").write_text("from segicl.model import Model\n")
    (tmp_path / "segicl" / "model.py").write_text("def build():\n    from . import pipeline\n")
    (tmp_path / "segicl" / "pipeline.py").write_text("import segicl.model\nimport numpy\n")
    graph = import_graph(tmp_path)
    assert graph["segicl.pipeline"] == {"segicl.model"}
    assert cycles(graph) == [["segicl.model", "segicl.pipeline"]]
    assert forbidden_imports(graph) == ["segicl_data.io imports segicl.model (segicl_data may import only nothing of the project)"]


# Modules whose behaviour another test file exercises, and why it lives there.
TESTED_ELSEWHERE = {
    "segicl_data.dataset": "tests/data/test_build.py",  # the dataset is what the builder writes and reads back
    "segicl_data.sources": "tests/data/test_build.py",  # every source is read by the build
    "segicl_commands.datasets": "tests/commands/test_cli.py",  # the dataset flags of `segicl data`
    "mvg_head.evaluation": "tests/commands/test_mvg.py",  # through `segicl mvg-eval`, its only caller
}
# Installed modules that no test file exercises (none: one-off studies live in experiments/, not installed).
NOT_TESTED: set[str] = set()


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_with_behaviour_has_a_test_file_of_its_name(package):
    """tests/ mirrors the tree: tests/<folder>/test_<module>.py, or a named test file that exercises the module."""
    missing = []
    for path in sorted((REPO / package).glob("*.py")):
        module = f"{PACKAGES[package]}.{path.stem}"
        if path.stem == "__init__" or module in NOT_TESTED or (REPO / "tests" / package / f"test_{path.stem}.py").exists():
            continue
        elsewhere = TESTED_ELSEWHERE.get(module)
        mentions = (REPO / elsewhere).read_text(encoding="utf-8").replace("/", ".") if elsewhere else ""
        if module not in mentions and f"{package}.{path.stem}" not in mentions:
            missing.append(path.stem)
    assert missing == [], f"{package}/: no tests/{package}/test_<name>.py for {missing}"


def module_level_statements(path: Path) -> list[ast.stmt]:
    """The statements that run when the module is imported (its top level, and the bodies of top-level ifs/trys)."""
    pending, found = list(ast.parse(path.read_text(encoding="utf-8"), str(path)).body), []
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.If, ast.Try)):
            pending += node.body + node.orelse + getattr(node, "handlers", []) + getattr(node, "finalbody", [])
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.append(node)
    return found


def test_no_module_edits_sys_path():
    """Installed packages, stage scripts and examples import through the installed names, never by editing sys.path."""
    offenders = [str(path.relative_to(REPO)) for folder in (*PACKAGES, "examples")
                 for path in sorted((REPO / folder).rglob("*.py")) if "sys.path" in path.read_text(encoding="utf-8")]
    assert offenders == []


def test_importing_a_package_changes_no_environment_variable():
    """`os.environ` is set by the entry points when they run (offline switches), never as an import side effect."""
    offenders = []
    for module, path in sorted(project_modules().items()):
        for node in module_level_statements(path):
            source = ast.unparse(node)
            if any(edit in source for edit in ("environ[", "environ.setdefault", "environ.update", "environ.pop", "putenv")):
                offenders.append(f"{module}: {ast.unparse(node)[:60]}")
    assert offenders == []
