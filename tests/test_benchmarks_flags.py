"""Benchmarks take flags in one style (``--seq_len``, ``--update_results``), and every
command quoted in benchmarks/results/*.md and the README names only flags its script
declares (so a quoted command still runs as written)."""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _declared_options() -> dict[str, set[str]]:
    """Script name -> the ``--options`` its argparse parser declares (read from source)."""
    out = {}
    for f in sorted(os.listdir(BENCH)):
        if not f.endswith(".py"):
            continue
        opts = set()
        for node in ast.walk(ast.parse(open(os.path.join(BENCH, f)).read())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"):
                opts |= {a.value for a in node.args if isinstance(a, ast.Constant)
                         and isinstance(a.value, str) and a.value.startswith("--")}
        out[f[:-3]] = opts
    return out


def test_every_benchmark_option_is_underscore_style():
    declared = _declared_options()
    assert len(declared["plan"]) >= 10 and "--update_results" in declared["plan"]
    bad = {name: sorted(o for o in opts if "-" in o[2:]) for name, opts in declared.items()}
    assert {k: v for k, v in bad.items() if v} == {}
    script = open(os.path.join(BENCH, "gpu_check.sh")).read()
    assert re.findall(r"--[a-z0-9]+(?:-[a-z0-9]+)+", script) == []
    assert '"--dry_run"' in script


def _quoted_commands(text: str):
    """(script, [--options]) of every ``benchmarks/NAME.py ...`` command in ``text``
    (a line ending in a backslash continues on the next)."""
    text = re.sub(r"\\\n\s*", " ", text)
    for m in re.finditer(r"benchmarks/(\w+)\.py([^`\n]*)", text):
        yield m.group(1), [t.split("=")[0] for t in m.group(2).split() if t.startswith("--")]


def test_quoted_benchmark_commands_use_declared_flags():
    declared = _declared_options()
    docs = [os.path.join(BENCH, "results", f) for f in os.listdir(os.path.join(BENCH, "results"))
            if f.endswith(".md")] + [os.path.join(ROOT, "README.md")]
    seen, unknown = 0, []
    for path in docs:
        for script, opts in _quoted_commands(open(path).read()):
            if script not in declared:
                continue
            seen += 1
            unknown += [f"{os.path.relpath(path, ROOT)}: {script}.py {o}" for o in opts
                        if o not in declared[script] and o not in ("--help",)]
    assert seen >= 10
    assert unknown == []
