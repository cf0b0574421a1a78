"""docs/configuration.md, the kar.yaml reference, generated from the pydantic models of
:mod:`kar.project` (and the backbone configs of :mod:`kar.models.config`), so it cannot
drift: ``kar config docs`` writes it, a test compares it with the committed file.

A field's text is its ``Field(description=...)``, else the comments beside and above it in
the source.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

DOC_PATH = Path("docs") / "configuration.md"

_INTRO = """\
# kar.yaml reference

Generated from the settings models in `kar/project.py` (and `kar/models/config.py` for
`training.model_config`) by `kar config docs`; do not edit by hand: a test regenerates it
and compares. Every key is optional: a missing key takes its default, an unknown key is an
error naming it. `kar init DIR --interactions FILE` writes a kar.yaml for your own tables
(docs/data.md); `kar init DIR` the demo's.
"""


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """field name -> the source comments beside and directly above its line."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    cls = ast.parse(source).body[0]
    for node in getattr(cls, "body", []):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, by_line.get(line, ""))
            line -= 1
        beside = [by_line[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
                  if n in by_line and "fmt:" not in by_line[n]]  # fmt: skip
        text = " ".join(part for part in [*above, *beside] if part)
        if text:
            out[node.target.id] = text
    return out


def _type_name(annotation: Any) -> str:
    """``str | None``, ``"a" | "b"``, ``list[int]``, ... as kar.yaml users read them."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    factory = info.default_factory
    value = factory() if factory is not None else info.default  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value)}`".replace("|", "\\|")


def _bounds(info: FieldInfo) -> str:
    marks = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "pattern": "matches"}
    parts = []
    for meta in info.metadata:
        for attr, mark in marks.items():
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{mark} {value}")
    return f" ({', '.join(parts)})" if parts else ""


def _section_model(info: FieldInfo) -> type[BaseModel] | None:
    ann = info.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _table(model: type[BaseModel], prefix: str, only: set[str] | None = None) -> list[str]:
    """A markdown table of ``model``'s fields (``only`` these, when given)."""
    comments = _comments(model)
    rows = ["| key | type | default | what it does |", "| --- | --- | --- | --- |"]
    for name, info in model.model_fields.items():
        if only is not None and name not in only:
            continue
        key = info.alias or name
        sub = _section_model(info)
        text = info.description or comments.get(name, "")
        if sub is not None:
            anchor = f"{prefix}{key}".replace(".", "")
            text = f"section: see [`{prefix}{key}`](#{anchor})"
        text = text.replace("|", "\\|").replace("\n", " ")
        bounds = _bounds(info).replace("|", "\\|")
        rows.append(f"| `{key}` | {_type_name(info.annotation)}{bounds} | "
                    f"{_default(info)} | {text} |")  # fmt: skip
    return rows


def _sections(model: type[BaseModel], prefix: str = "") -> list[str]:
    """The model's table, then one heading + table per nested section, depth first."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        sub = _section_model(info)
        if sub is None:
            continue
        key = f"{prefix}{info.alias or name}"
        doc = sub.__dict__.get("__doc__") or ""
        out += ["", f"## `{key}`", ""]
        if doc:
            out += [" ".join(doc.split()), ""]
        out += _table(sub, key + ".")
        out += _sections(sub, key + ".")
    return out


def _backbone_configs() -> list[str]:
    from kar.models import config as model_config

    base = model_config.ModelConfig
    out = ["", "## `training.model_config`", "",
           "Backbone settings, FuxiCTR style: `default` applies to every backbone, an entry "
           "named after a backbone adds to it (docs/models.md). Fields every backbone takes:",
           ""]  # fmt: skip
    out += _table(base, "training.model_config.")
    for sub in base.__subclasses__():
        own = {k: v for k, v in sub.model_fields.items() if k not in base.model_fields}
        backbone = sub.__name__.removesuffix("Config").lower()
        doc = " ".join((sub.__dict__.get("__doc__") or "").split())
        out += ["", f"### `{backbone}`", "", doc or f"`{sub.__name__}`."]
        if own:
            out += ["", *_table(sub, f"training.model_config.{backbone}.", set(own))]
    return out


def render_configuration_doc() -> str:
    """The whole of docs/configuration.md."""
    from kar.project import ProjectSettings

    lines = [_INTRO, "## Top level", "", *_table(ProjectSettings, "")]
    lines += _sections(ProjectSettings)
    lines += _backbone_configs()
    return "\n".join(lines).rstrip() + "\n"


def write_configuration_doc(path: str | Path = DOC_PATH) -> Path:
    """Write :func:`render_configuration_doc` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_configuration_doc(), encoding="utf-8")
    return path
