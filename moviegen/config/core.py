"""Dataclass configs from defaults < YAML < command line, with ``--help`` from field docs.

Every entry point declares its options as a dataclass whose fields carry a docstring (the
string literal under the field) and parses them here:

    cfg = parse_args(JobConfig, argv, __doc__)      # --config FILE, --a.b=v, --a.b v, -h

Values are checked against the annotations; a section (a nested dataclass) may define
``validate(self)`` for its own rules, and a top-level class may check rules across
sections in its own ``validate``. A YAML file may leave a value to its user with ``???``
(Hydra's convention: a stage config's data and text encoders); one not given is an error
that says what to put there. Every error is a ``ConfigError`` that names the dotted key
and where the bad value came from (the YAML file or the command line), and is raised
before any process group, model or output file exists.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import sys
import textwrap
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or impossible.

    ``key`` is the dotted name of the offending field when one is known."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def check(cond: bool, key: str, why: str) -> None:
    """Raises ``ConfigError("key: why")`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key}: {why}", key=key)


def check_output_dir(path: str, key: str = "output_dir") -> None:
    """``path`` is (or can be made) a writable directory: checked before anything starts."""
    check(bool(path), key, "must not be empty")
    probe = path
    while not os.path.exists(probe):  # the nearest existing parent must be a writable dir
        parent = os.path.dirname(os.path.abspath(probe))
        if parent == probe:
            break
        probe = parent
    check(os.path.isdir(probe), key, f"'{path}': '{probe}' is a file, not a directory")
    check(os.access(probe, os.W_OK | os.X_OK), key, f"'{path}': '{probe}' is not writable")


def check_choice(value: Any, key: str, choices) -> None:
    check(value in choices, key, f"{value!r} is not one of {', '.join(map(str, choices))}")


# --------------------------------------------------------------------------- building
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` and builds nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got "
                              f"{type(value).__name__} {value!r}", key=key)
        return build_dataclass(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        (elem_tp,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            value = [value]  # a repeated or single command-line value
        return [_coerce(v, elem_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} "
                              f"{value!r}", key=key)
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-2" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # --prompt 123 or a numeric path component
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}",
                          key=key)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected int, got bool {value!r}", key=key)
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} "
                          f"{value!r}", key=key)
    return value


def build_dataclass(cls: type, values: dict, prefix: str = "") -> Any:
    """``cls(**values)`` with unknown keys and wrong types rejected by dotted name."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}' (valid keys in "
                          f"'{prefix.rstrip('.') or 'top level'}': {', '.join(names)})",
                          key=prefix + unknown[0])
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    for f in dataclasses.fields(cls):
        if (f.name not in kwargs and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING):
            raise ConfigError(f"{prefix}{f.name}: required (--{prefix}{f.name}=...)",
                              key=prefix + f.name)
    return cls(**kwargs)


def validate_tree(cfg: Any) -> None:
    """Calls ``validate()`` on every nested section, innermost first, then on ``cfg``
    (a section holding a list of sections validates its items itself, naming the index).
    A ``ValueError`` from a section written outside this package ("key: why") becomes a
    ``ConfigError`` for that key."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate_tree(value)
    if hasattr(cfg, "validate"):
        try:
            cfg.validate()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(str(e), key=str(e).split(":")[0]) from None


def _get_dotted(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_keys_read(cfg: Any) -> None:
    """A job that shares sections with another but does not read some of their keys lists
    them in its class's ``NOT_READ`` (dotted key -> why, and what to use instead): a value
    other than the job's own default for one of them is an error, not silently ignored."""
    not_read = getattr(type(cfg), "NOT_READ", None) or {}
    if not not_read:
        return
    default = type(cfg)()
    for key, why in not_read.items():
        value, usual = _get_dotted(cfg, key), _get_dotted(default, key)
        check(value == usual, key, f"{value!r} is not read by this job: {why}; remove it "
              f"(the default is {usual!r})")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------- sources
def _set_dotted(tree: dict, dotted: str, value: Any, repeat: bool = False,
                extend: bool = False) -> None:
    """Sets ``tree[a][b] = value`` for ``a.b``; with ``repeat``, a key given again adds to
    its earlier values (``extend``: ``value`` is a list of values, not one value)."""
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--{dotted}: '{p}' is a value, not a section", key=dotted)
        node = child
    last = parts[-1]
    new = value if extend else [value]
    if repeat and last in node:  # --prompt a --prompt b -> [a, b]
        prev = node[last]
        node[last] = (prev if isinstance(prev, list) else [prev]) + new
    else:
        node[last] = value


def _fields_of_type(cls: type | None, want, prefix: str = "") -> set[str]:
    """Dotted names of the fields whose annotation ``want(tp)`` accepts."""
    if cls is None:
        return set()
    out = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out |= _fields_of_type(tp, want, prefix + f.name + ".")
        elif want(tp):
            out.add(prefix + f.name)
    return out


def _is_list(tp) -> bool:
    return typing.get_origin(tp) in (list, tuple) or any(
        typing.get_origin(a) in (list, tuple) for a in typing.get_args(tp))


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def parse_overrides(args: list[str], cls: type | None = None) -> dict:
    """``["--train.steps=60", "--model.name", "1b"]`` -> nested dict (values parsed as YAML).

    With ``cls``, a boolean field may be given as a bare flag (``--ema``), and a list
    field takes space-separated values (``--inputs a b``), a YAML list
    (``--weights=[0.7,0.3]``) or repeats (``--prompt a --prompt b``), all collected in
    order; for any other field the last value wins."""
    bools = _fields_of_type(cls, lambda tp: tp is bool)
    lists = _fields_of_type(cls, _is_list)
    tree: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: options look like --key=value "
                              f"or --section.key=value")
        extend = False
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            value = _parse_value(value)
        elif arg[2:] in bools and (i + 1 >= len(args) or args[i + 1].startswith("--")):
            key, value = arg[2:], True
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"{arg}: missing value", key=arg[2:])
            key, value = arg[2:], _parse_value(args[i + 1])
            i += 1
            if key in lists and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, extend = [value], True  # --inputs a b: every value up to the next option
                while i + 1 < len(args) and not args[i + 1].startswith("--"):
                    value.append(_parse_value(args[i + 1]))
                    i += 1
        _set_dotted(tree, key, value, repeat=key in lists, extend=extend)
        i += 1
    return tree


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# A value a config file leaves for its user to give (the "???" of Hydra / OmegaConf): a
# stage config names the data and the text encoders it needs without inventing them.
REQUIRED = "???"


def _required_leaves(node: Any, key: str = "", parent: Any = None):
    """(dotted key, the mapping holding it) of every value still ``REQUIRED`` in a merged
    tree; list items are named ``key[i]``."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _required_leaves(v, f"{key}.{k}" if key else k, node)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _required_leaves(v, f"{key}[{i}]", parent)
    elif node == REQUIRED:
        yield key, parent


def _field_doc(cls: type, key: str) -> str:
    """The docstring of the field at dotted ``key`` (``a.b[0].c``) under ``cls``."""
    doc = ""
    for part in key.split("."):
        name = part.split("[")[0]
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return doc
        tp = typing.get_type_hints(cls).get(name)
        doc = field_docs(cls).get(name, "")
        if "[" in part:  # a list item: its element type
            tp = (typing.get_args(tp) or (None,))[0]
        cls = next((a for a in (tp, *typing.get_args(tp))
                    if isinstance(a, type) and dataclasses.is_dataclass(a)), None)
    return doc


def check_required(tree: dict, cls: type) -> None:
    """Every value a config file marked ``???`` was given: otherwise a ConfigError naming
    the key, what it means and how to give it."""
    for key, parent in _required_leaves(tree):
        doc = _field_doc(cls, key)
        item = ""
        if "[" in key:
            how = (f"set it in a copy of the file, or give the whole list with "
                   f"--{key.split('[')[0]}='[...]'")
            if isinstance(parent, dict) and "name" in parent:  # which item: its name
                item = f" (for {key.rsplit('.', 1)[0]}, '{parent['name']}')"
        else:
            how = f"give --{key}=... or set it in a copy of the file"
        raise ConfigError(f"{key}: required{item}, the file leaves it to you: {doc} ({how})",
                          key=key)


def _dotted_keys(tree: dict, prefix: str = "") -> set[str]:
    """Dotted names of the values set in ``tree`` (leaves, not sections)."""
    out = set()
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out |= _dotted_keys(v, prefix + k + ".")
        else:
            out.add(prefix + k)
    return out


def read_yaml(path: str) -> dict:
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            loaded = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return loaded or {}


def load_config(path: str | None, overrides: list[str] | None, cls: type,
                validate: bool = True, checks=None) -> Any:
    """Defaults < YAML file < command-line overrides (every ``???`` of the file given);
    then every section's ``validate``,
    then ``checks(cfg)``: the job's rules that need code this package does not import
    (the data's shapes, the model's parameter names), given by the job's entry point.

    An error names its source: ``FILE: key: why`` for a value from the file (or a rule
    between values), ``command line: --key: why`` for a value given on the command line."""
    tree = read_yaml(path) if path is not None else {}
    cli = parse_overrides(overrides or [], cls)
    cli_keys = _dotted_keys(cli)
    source = path or "<defaults>"
    try:
        merged = _deep_merge(tree, cli)
        check_required(merged, cls)
        cfg = build_dataclass(cls, merged)
        if validate:
            check_keys_read(cfg)  # first: a key the job ignores needs no other rule
            validate_tree(cfg)
            if checks is not None:
                checks(cfg)
    except ConfigError as e:
        bare = (e.key or "").split("[")[0]

        def given(keys: set[str]) -> bool:  # the key, a section above it, or a mapping
            return bare in keys or any(bare.startswith(k + ".") or k.startswith(bare + ".")
                                       for k in keys)  # value under it (train.tasks.t2v)

        if given(cli_keys):
            raise ConfigError(f"command line: {e}", key=e.key) from None
        if cli_keys and not given(_dotted_keys(tree)):  # a rule between values of both
            raise ConfigError(f"{source} with the command-line options: {e}",
                              key=e.key) from None
        raise ConfigError(f"{source}: {e}", key=e.key) from None
    return cfg


# --------------------------------------------------------------------------- help text
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass, read from its source."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(src).body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type, prefix: str = "", not_read: dict | None = None) -> list[str]:
    """One line per field: --dotted.key (default): docstring; a key the job does not read
    (its ``NOT_READ``) says so instead."""
    lines = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    if not_read is None:
        not_read = getattr(cls, "NOT_READ", None) or {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"[{prefix}{f.name}] {docs.get(f.name, '')}")
            lines.extend(describe(tp, prefix + f.name + ".", not_read))
            continue
        if prefix + f.name in not_read:
            lines.append(f"  --{prefix}{f.name}: not read by this job "
                         f"({not_read[prefix + f.name]})")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            lines.append(f"  --{prefix}{f.name} (required): {docs.get(f.name, '')}")
            continue
        if dataclasses.is_dataclass(default) or (isinstance(default, list) and default
                                                 and dataclasses.is_dataclass(default[0])):
            default = "[...]"
        lines.append(f"  --{prefix}{f.name} ({default!r}): {docs.get(f.name, '')}")
    return lines


def split_config_arg(argv: list[str]) -> tuple[str | None, list[str]]:
    """Splits ``--config PATH`` (or ``--config=PATH``) from the other options."""
    path, rest, i = None, [], 0
    while i < len(argv):
        if argv[i] == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a path")
            path = argv[i + 1]
            i += 2
            continue
        if argv[i].startswith("--config="):
            path = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    return path, rest


def print_help(cls: type, description: str) -> None:
    nested = any(dataclasses.is_dataclass(tp) for tp in typing.get_type_hints(cls).values())
    print(description.strip("\n") + "\n\nOptions" + (" (any field; sections are dotted, "
          "e.g. --train.steps=10)" if nested else "") + ":")
    print("\n".join(describe(cls)))


def parse_args(cls: type, argv: list[str] | None = None, description: str = "",
               config_file: bool = True, positional: str | None = None,
               checks=None) -> Any:
    """The one command-line parser of every entry point: ``-h/--help`` prints the
    description and every field with its default and docstring, then exits 0; a
    ``ConfigError`` propagates (entry points print it and exit 2). ``positional`` names
    the field a leading bare argument sets (``python -m moviegen.plot RUN_DIR``);
    ``checks`` see load_config."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        try:
            print_help(cls, description)
            sys.stdout.flush()
        except BrokenPipeError:  # `--help | head`: the reader left, nothing is wrong
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)
    if positional and argv and not argv[0].startswith("-"):
        argv = [f"--{positional}={argv[0]}", *argv[1:]]
    path, rest = split_config_arg(argv) if config_file else (None, argv)
    return load_config(path, rest, cls=cls, checks=checks)


def run_cli(fn, cls: type, argv: list[str] | None, description: str, **kwargs):
    """Parses ``cls`` from ``argv`` and returns ``fn(cfg)``; a configuration error is one
    line on stderr and exit status 2."""
    try:
        cfg = parse_args(cls, argv, description, **kwargs)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    return fn(cfg)
