"""The types of chapter parameters, as the book runner reads them.

A parameter's type is the annotation in its notebook's parameters cell (``window: Literal["auto"]
| list[int] = "auto"``), read with :mod:`ast` and never run; without one, the type of its default.
A value given as text (``-p``, ``VLMNB_PARAMS``) becomes the first reading that fits: a Python
literal, a YAML value, or the text itself.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass

import yaml

# A type is a small tuple: ("any",), ("str",), ("int",), ("float",), ("bool",), ("none",),
# ("literal", values), ("list", item), ("tuple", items), ("union", alternatives).
ANY = ("any",)


@dataclass(frozen=True)
class Text:
    """A parameter value given as text (``-p``, ``VLMNB_PARAMS``), read against the declared type
    of each chapter's parameter (:func:`read_text`)."""

    text: str
    origin: str = "-p"


@dataclass
class Parameter:
    """One parameter of a notebook: its default, its type and whether the type was declared."""

    name: str
    default: object
    type: tuple = ANY
    declared: bool = False

    def describe(self) -> str:
        shown = describe_type(self.type)
        return shown if self.declared else f"{shown} like its default {self.default!r}"


def type_of_default(default) -> tuple:
    if default is None:
        return ANY
    if isinstance(default, bool):
        return ("bool",)
    if isinstance(default, int):
        return ("int",)
    if isinstance(default, float):
        return ("float",)
    if isinstance(default, (list, tuple)):
        return ("list", ANY)
    if isinstance(default, str):
        return ("str",)
    return ANY


SIMPLE_TYPES = {"str": ("str",), "int": ("int",), "float": ("float",), "bool": ("bool",), "None": ("none",),
           "Any": ANY, "object": ANY, "list": ("list", ANY), "List": ("list", ANY), "tuple": ("list", ANY),
           "Tuple": ("list", ANY)}


def parse_type(node: ast.expr) -> tuple:
    """The type an annotation (an ``ast`` expression) declares; ValueError for what it cannot read."""
    if isinstance(node, ast.Constant) and node.value is None:
        return ("none",)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
        return parse_type(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        alternatives = []
        for side in (node.left, node.right):
            kind = parse_type(side)
            alternatives += list(kind[1]) if kind[0] == "union" else [kind]
        return ("union", tuple(alternatives))
    name = type_name(node)
    if name in SIMPLE_TYPES:
        return SIMPLE_TYPES[name]
    if isinstance(node, ast.Subscript):
        base = type_name(node.value)
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base in ("list", "List", "Sequence") and len(args) == 1:
            return ("list", parse_type(args[0]))
        if base in ("tuple", "Tuple"):
            if len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is Ellipsis:
                return ("list", parse_type(args[0]))
            return ("tuple", tuple(parse_type(a) for a in args))
        if base == "Literal":
            return ("literal", tuple(ast.literal_eval(a) for a in args))
        if base == "Optional" and len(args) == 1:
            return ("union", (parse_type(args[0]), ("none",)))
        if base == "Union":
            return ("union", tuple(parse_type(a) for a in args))
    raise ValueError(ast.unparse(node))


def type_name(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def describe_type(kind: tuple) -> str:
    """A type as a reader writes it: ``"auto" or list[int]``."""
    tag = kind[0]
    if tag == "union":
        return " or ".join(describe_type(k) for k in kind[1])
    if tag == "literal":
        return " or ".join(json.dumps(v) if isinstance(v, str) else repr(v) for v in kind[1])
    if tag == "list":
        return "list" if kind[1] == ANY else f"list[{describe_type(kind[1])}]"
    if tag == "tuple":
        return f"[{', '.join(describe_type(k) for k in kind[1])}]"
    return {"none": "None", "any": "any value"}.get(tag, tag)


NO_FIT = object()


def conform(value, kind: tuple):
    """``value`` as type ``kind`` wants it (tuples become lists, ints in a float slot floats), or
    ``NO_FIT`` when it does not fit."""
    tag = kind[0]
    if tag == "any":
        return list(value) if isinstance(value, tuple) else value
    if tag == "union":
        for alternative in kind[1]:
            got = conform(value, alternative)
            if got is not NO_FIT:
                return got
        return NO_FIT
    if tag == "str":
        return value if isinstance(value, str) else NO_FIT
    if tag == "bool":
        return value if isinstance(value, bool) else NO_FIT
    if tag == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) else NO_FIT
    if tag == "float":
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else NO_FIT
    if tag == "none":
        return None if value is None else NO_FIT
    if tag == "literal":
        return value if any(type(value) is type(v) and value == v for v in kind[1]) else NO_FIT
    if tag in ("list", "tuple"):
        if not isinstance(value, (list, tuple)):
            return NO_FIT
        items = [kind[1]] * len(value) if tag == "list" else list(kind[1])
        if len(items) != len(value):
            return NO_FIT
        out = [conform(v, k) for v, k in zip(value, items)]
        return NO_FIT if any(v is NO_FIT for v in out) else out
    raise ValueError(f"unknown type {kind!r}")


def read_text(text: str, kind: tuple):
    """Text as a value of type ``kind``: the first of its Python-literal reading, its YAML reading
    and the text itself that fits, or ``NO_FIT``."""
    readings = []
    try:
        readings.append(ast.literal_eval(text.strip()))
    except Exception:  # noqa: BLE001 -- not a Python literal: try the next reading
        pass
    try:
        readings.append(yaml.safe_load(text) if text.strip() else "")
    except yaml.YAMLError:
        pass
    readings.append(text)
    for reading in readings:
        got = conform(reading, kind)
        if got is not NO_FIT:
            return got
    return NO_FIT
