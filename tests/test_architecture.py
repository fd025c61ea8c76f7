"""The code's layout rules, checked on the source (every import counts, function-local
ones too): one import namespace (``moviegen``; nothing else at the top level of
site-packages, so no other distribution can shadow or overwrite our code); no import
cycle; ``moviegen.kernels`` imports nothing else of the project and ``moviegen.parallel``
nothing but the kernels (plans are applied from outside the model, data and training
code); ``moviegen.config`` nothing but the model sizes and the layout names (no torch);
test-only code lives under tests/; no file cites a document outside the repository; no
class name is defined twice, and no public function name in two modules (one name, one
meaning: ``generate`` once meant three things)."""
import ast
import os
import re
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("moviegen",)


def _modules() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        for d, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(d, f)
                    mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[mod.removesuffix(".__init__")] = path
    return out


def _imports(path: str, module: str, modules: dict) -> set[str]:
    """Project modules ``module`` imports (a ``from pkg import name`` that names a module
    counts as that module)."""
    tree = ast.parse(open(path).read())
    is_pkg = path.endswith("__init__.py")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = module.split(".")
                parts = parts if is_pkg else parts[:-1]
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def _graph():
    modules = _modules()
    return {m: _imports(p, m, modules) for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ re-exporting its submodules is not a cycle of logic: drop the
    # package -> own-submodule edges, keep everything else
    pruned = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    assert _cycles(pruned) == []


def _outside(graph, pkg: str, allowed: tuple[str, ...]) -> dict[str, list[str]]:
    """Modules of ``pkg`` that import project modules outside ``allowed`` (the package
    ``moviegen`` itself is only its version string and counts as allowed)."""
    def ok(dep):
        return dep == "moviegen" or any(dep == a or dep.startswith(a + ".") for a in allowed)
    bad = {m: sorted(d for d in deps if not ok(d))
           for m, deps in graph.items() if m == pkg or m.startswith(pkg + ".")}
    return {m: d for m, d in bad.items() if d}


def test_kernels_import_nothing_else_of_the_project():
    assert _outside(_graph(), "moviegen.kernels", ("moviegen.kernels",)) == {}


def test_parallel_imports_nothing_of_the_model_data_or_training_code():
    assert _outside(_graph(), "moviegen.parallel",
                    ("moviegen.parallel", "moviegen.kernels")) == {}


# What a configuration may read: its own package, the model sizes and the layout names
# (all without torch); every rule that needs the data, model or training code runs where
# the job starts (load_config's ``checks``).
CONFIG_MAY_IMPORT = ("moviegen.config", "moviegen.models.sizes", "moviegen.parallel.parallel_dims")


def test_config_imports_no_data_model_or_training_code():
    assert _outside(_graph(), "moviegen.config", CONFIG_MAY_IMPORT) == {}
    graph = _graph()  # and what it may import stays light
    for light in CONFIG_MAY_IMPORT[1:]:
        assert _outside(graph, light, (light,)) == {}, light


def test_config_loads_without_torch():
    """A config error (or --help) needs no torch: importing moviegen.config, loading and
    validating the tiny transformer and TAE configs and describing both load none of it."""
    import subprocess
    import sys

    code = ("import sys; from moviegen.config import TAEJobConfig, describe, load_config; "
            "load_config('launch/configs/tiny.yaml', ['--output_dir=/tmp/x']); "
            "load_config('launch/configs/tae_tiny.yaml', ['--output_dir=/tmp/x'], "
            "cls=TAEJobConfig); describe(); describe(TAEJobConfig); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'numpy', 'av', 'transformers')); print(heavy); assert not heavy")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_rules_above_can_fail():
    """The checks see a forbidden import when there is one (guards against a walker that
    silently finds no modules)."""
    graph = _graph()
    assert len([m for m in graph if m.startswith("moviegen.kernels.")]) >= 5
    assert len([m for m in graph if m.startswith("moviegen.parallel.")]) >= 5
    planted = dict(graph, **{"moviegen.kernels.x": {"moviegen.models.transformer"}})
    assert _outside(planted, "moviegen.kernels", ("moviegen.kernels",)) == {
        "moviegen.kernels.x": ["moviegen.models.transformer"]}


def test_one_top_level_import_name():
    """Only ``moviegen`` is a top-level package of the distribution, and the repository
    root holds no other importable package that a checkout on sys.path would expose."""
    setup_text = open(os.path.join(ROOT, "setup.py")).read()
    assert re.search(r'find_packages\(include=\["moviegen", "moviegen\.\*"\]\)', setup_text)
    top = sorted(e for e in os.listdir(ROOT)
                 if (e.endswith(".py") and e != "setup.py")
                 or os.path.isfile(os.path.join(ROOT, e, "__init__.py")))
    assert top == ["moviegen"]


def test_no_test_only_modules_in_the_packages():
    assert [m for m in _modules() if m.split(".")[-1] in ("testing", "test_utils")] == []


def test_no_citations_of_documents_outside_the_repository():
    pattern = re.compile(r"design\.md|style\.md|\bIssue[- ]?[0-9]|\bissue #?[0-9]")
    hits = []
    for d in (*PACKAGES, "benchmarks", "launch", "scripts", "tests"):
        for base, _, files in os.walk(os.path.join(ROOT, d)):
            for f in files:
                if f.endswith((".py", ".md", ".yaml", ".sh", ".sbatch")):
                    path = os.path.join(base, f)
                    for i, line in enumerate(open(path, errors="replace"), 1):
                        if pattern.search(line) and "pattern = re.compile" not in line:
                            hits.append(f"{os.path.relpath(path, ROOT)}:{i}")
    assert hits == []


def test_no_class_name_defined_twice():
    where = defaultdict(list)
    for mod, path in _modules().items():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(mod)
    assert {k: v for k, v in where.items() if len(v) > 1} == {}


def test_source_files_over_500_lines_say_why():
    long = []
    for mod, path in _modules().items():
        text = open(path).read()
        if text.count("\n") > 520 and "on purpose" not in text[:1500]:
            long.append(mod)
    assert long == []


# entry points (parse, then call); a package front binding its own module's function with
# defaults; the kernel router, which gives each kernel's function its torch fallback
ENTRY_POINT_FUNCTIONS = ("main", "run")


def _same_function_on_purpose(name: str, mods: list[str]) -> bool:
    if name in ENTRY_POINT_FUNCTIONS:
        return True
    if len(mods) == 2:
        a, b = sorted(mods, key=len)
        if b.startswith(a + "."):  # the package's __init__ and its own module
            return True
        if "moviegen.kernels.dispatch" in mods and all(m.startswith("moviegen.kernels.")
                                                        for m in mods):
            return True
    return False


def _public_functions(modules: dict[str, str]) -> dict[str, list[str]]:
    where = defaultdict(list)
    for mod, path in modules.items():
        for node in ast.parse(open(path).read()).body:  # module level only
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                where[node.name].append(mod)
    return where


def _ambiguous_functions(where: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: sorted(v) for k, v in where.items()
            if len(v) > 1 and not _same_function_on_purpose(k, v)}


def test_no_public_function_name_defined_in_two_modules():
    where = _public_functions(_modules())
    assert len(where) > 100  # the walker sees the package
    assert _ambiguous_functions(where) == {}
    planted = dict(where, generate=["moviegen.data.synthetic", "moviegen.sampling.solver"])
    assert _ambiguous_functions(planted) == {
        "generate": ["moviegen.data.synthetic", "moviegen.sampling.solver"]}
