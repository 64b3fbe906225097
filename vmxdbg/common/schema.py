"""Validating a file's JSON against the JSON Schemas shipped in vmxdbg/schemas/.

The schemas (draft-07) are the structural part of the formats of
docs/formats.md: which keys exist, their types, enums and required keys.
Readers call `validate` first and keep only what a schema cannot say:
hex parsing, keys compared by value, bounds that depend on the value.
fastjsonschema compiles each schema once, on first use, to plain Python
(it has no dependencies and runs in WinDbg's Python 3.9 through pykd).

Every problem is one InputError naming the file (and line) and the key
path: `s.vmxsnap.json [processors.0.state.cpl]: must be 0-3, got 9`.
"""
from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any, Callable, Dict, Optional

import fastjsonschema

from .errors import InputError

#: schema name -> what a person calls a file of it
NAMES = {"snapshot": "snapshot", "report": "report", "recording-header": "recording",
         "recording-trailer": "recording trailer", "recording-record": "recording record"}

_schemas: Dict[str, dict] = {}
_validators: Dict[str, Callable[[Any], Any]] = {}


def schema(name: str) -> dict:
    """The parsed schema `vmxdbg/schemas/NAME.schema.json`."""
    if name not in _schemas:
        text = resources.files("vmxdbg").joinpath("schemas").joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
        _schemas[name] = json.loads(text)
    return _schemas[name]


def _validator(name: str) -> Callable[[Any], Any]:
    if name not in _validators:
        _validators[name] = fastjsonschema.compile(_inlined(schema(name)))
    return _validators[name]


def _inlined(tree: Any, root: Optional[dict] = None) -> Any:
    """`tree` with each local `{"$ref": "#/definitions/X"}` replaced by X itself (the schemas
    have no recursive definitions): fastjsonschema validates an inlined subschema in place,
    a referenced one through a call that formats its key path, which is several times slower."""
    root = tree if root is None else root
    if isinstance(tree, dict):
        ref = tree.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            return _inlined(root["definitions"][ref[len("#/definitions/"):]], root)
        return {k: (v if k in ("definitions", "enum", "const") else _inlined(v, root)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_inlined(v, root) for v in tree]
    return tree


def validate(data: Any, name: str, source: str, *, line: Optional[int] = None) -> dict:
    """Check `data` against schema `name`; returns it, or raises one InputError.

    A format with a `format` constant is first recognised by it and by its
    major version, so a file of another kind or a newer version is named as such
    rather than by the first key the schema dislikes."""
    props = schema(name).get("properties", {})
    fmt = props.get("format", {}).get("const")
    if fmt is not None:
        _check_identity(data, fmt, props["version"], NAMES[name], source, line)
    try:
        _validator(name)(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        key, message = explain(exc)
        raise InputError(message, source=source, line=line, key=key or None) from None
    return data


def _check_identity(data: Any, fmt: str, version_schema: dict, what: str, source: str,
                    line: Optional[int]) -> None:
    if not isinstance(data, dict) or data.get("format") != fmt:
        got = data.get("format") if isinstance(data, dict) else None
        raise InputError(f"not a vmxdbg {what} (format is {_short(got)}, expected {fmt!r})", source=source, line=line)
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise InputError("version is missing or not a number", source=source, line=line, key="version")
    supported = version_schema["maximum"]
    if str(version).split(".")[0] != str(supported):
        raise InputError(f"{what} version {_short(version, 20)} is not supported (this vmxdbg reads version "
                         f"{supported})", source=source, line=line, key="version")


def explain(exc: "fastjsonschema.JsonSchemaValueException") -> "tuple[str, str]":
    """(key path, one-line message) of a schema violation, in the readers' own words."""
    key = re.sub(r"^data\.?", "", exc.name or "")
    rule, value = exc.rule, exc.value
    d = exc.definition if isinstance(exc.definition, dict) else {}
    desc = d.get("description")
    if rule == "required":
        missing = [k for k in d.get("required", ()) if not isinstance(value, dict) or k not in value]
        return _join(key, missing[0] if missing else "?"), "missing"
    if rule == "propertyNames":
        names = d.get("propertyNames", {})
        pattern = names.get("pattern")
        bad = next((k for k in value if pattern and not re.search(pattern, k)), None) if isinstance(value, dict) else None
        return _join(key, str(bad)), f"expected {names.get('description') or 'a key matching ' + str(pattern)} as key"
    if rule == "type":
        types = d.get("type")
        types = types if isinstance(types, list) else [types]
        wanted = desc if desc and "string" in types and "integer" in types else \
            " or ".join(_TYPES.get(t, str(t)) for t in types)
        return key, f"expected {wanted}, got {_tname(value)}"
    if rule in ("enum", "const"):
        choices = d.get("enum", [d.get("const")])
        return key, f"expected {' or '.join(json.dumps(c) for c in choices)}, got {_short(value)}"
    if rule in ("minimum", "maximum"):
        lo, hi = d.get("minimum"), d.get("maximum")
        bound = f"{lo}-{hi}" if lo is not None and hi is not None else (f"at least {lo}" if hi is None else f"at most {hi}")
        return key, f"must be {bound}, got {_short(value)}"
    if rule in ("pattern", "anyOf", "oneOf", "minItems", "maxItems"):
        return key, f"expected {desc or 'a value of another form'}, got {_short(value)}"
    return key, re.sub(r"^data\S*\s*", "", exc.message)


_TYPES = {"object": "an object", "array": "a list", "string": "a string", "integer": "an integer",
          "number": "a number", "boolean": "true or false", "null": "null"}


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


def _tname(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _short(v: Any, n: int = 40) -> str:
    if isinstance(v, (dict, list)):
        return _tname(v)
    s = repr(v)
    return s if len(s) <= n else s[: n - 4] + "...'"
