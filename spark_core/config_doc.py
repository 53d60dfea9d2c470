"""docs/config.md, generated from the typed config (spark_core/config.py): one table per section.

Regenerate with `python -m spark_core.config_doc` (writes docs/config.md; `--check` exits 1
when the file is stale, as tests/test_config_doc.py does).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

from spark_core import REPO
from spark_core.config import SparkConfig

OUT = REPO / "docs" / "config.md"
HEADER = """# Configuration reference

Generated from `spark_core/config.py` by `python -m spark_core.config_doc`; do not edit by hand
(a test fails when this file is stale). A config file is YAML with these sections; a key it
leaves out takes the default, an unknown key is an error naming it. Each shipped config in
`configs/` says in its first comment what it is for, and sets only what differs from here.
"""


def _type(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(metadata) -> str:
    marks = []
    for m in metadata:
        for cls, sym, attr in ((Ge, "≥", "ge"), (Gt, ">", "gt"), (Le, "≤", "le"), (Lt, "<", "lt")):
            if isinstance(m, cls):
                marks.append(f"{sym} {getattr(m, attr)}")
    return f" ({', '.join(marks)})" if marks else ""


def _default(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    return f"`{value}`"


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _optional_section(annotation) -> type[BaseModel] | None:
    """The section type of an `X | None` field whose X is a section (off when null), else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            return args[0]
    return None


def _sections(model: type[BaseModel], path: str) -> list[tuple[str, type[BaseModel]]]:
    out = [(path, model)]
    for name, field in model.model_fields.items():
        sub = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) \
            else _optional_section(field.annotation)
        if sub is not None:
            out += _sections(sub, f"{path}.{name}" if path else name)
    return out


def reference() -> str:
    """The whole docs/config.md text."""
    parts = [HEADER]
    for path, model in _sections(SparkConfig, ""):
        title = f"`{path}`" if path else "top level"
        parts.append(f"\n## {title}\n\n{_cell(model.__doc__)}\n\n")
        rows = []
        for name, field in model.model_fields.items():
            sub = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
            if sub:
                key = f"{path}.{name}" if path else name
                rows.append(f"| `{name}` | section | | {_cell(field.description)} (see `{key}`) |")
            elif _optional_section(field.annotation) is not None:
                key = f"{path}.{name}" if path else name
                rows.append(f"| `{name}` | section or null | {_default(field.default)} | {_cell(field.description)} "
                            f"(see `{key}`) |")
            else:
                rows.append(f"| `{name}` | {_type(field.annotation)}{_bounds(field.metadata)} | {_default(field.default)} "
                            f"| {_cell(field.description)} |")
        parts.append("| field | type | default | what it does |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write docs/config.md from the typed config.")
    ap.add_argument("--check", action="store_true", help="Exit 1 if the file differs from what would be written.")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    text = reference()
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(f"{args.out} is stale: run `python -m spark_core.config_doc`", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
