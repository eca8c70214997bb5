"""Reading scenario YAML field by field, collecting every problem with the field's path.

`Reader` wraps one mapping (``nodes[2]``) and reads typed fields from it; a bad value is
recorded as ``nodes[2].gpus: must be a whole number ≥ 0 (got 'x')`` and read as None, so
that loading goes on and reports every problem of a file at once, not only the first.
YAML is parsed with a loader that refuses duplicate keys (PyYAML silently keeps the
last one, which hides typos such as two ``quota:`` lines).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

GIB = 1 << 30


def pools_phrase(pools: set[str]) -> str:
    """``pools: a100, default`` for messages (``pools: none`` without nodes)."""
    return f"pools: {', '.join(sorted(pools)) or 'none'}"


class Problems:
    """Problems found so far, one line each: ``path: what is wrong``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{where}: {message}" if where else message)

    def __bool__(self) -> bool:
        return bool(self.lines)


def show(value: object) -> str:
    """A value as the user wrote it, for messages: ``'x'``, ``-1``, ``[1, 2]``."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Reader:
    """Typed access to one mapping of a scenario, recording problems under ``where``."""

    def __init__(self, data: object, where: str, problems: Problems, known: Sequence[str]) -> None:
        self.where = where
        self.problems = problems
        if not isinstance(data, Mapping):
            problems.add(
                where or "the file", f"must be a mapping of keys to values (got {show(data)})"
            )
            data = {}
        self.data: Mapping[Any, Any] = data
        for key in data:
            if key not in known:
                problems.add(self.path(str(key)), f"unknown key (known: {', '.join(known)})")

    def path(self, key: str) -> str:
        """The field's name in messages: ``nodes[2].gpus`` (``cycles`` at the top)."""
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def bad(self, key: str, message: str) -> None:
        self.problems.add(self.path(key), message)

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.bad(key, "is required")
            return default
        if not isinstance(value, str) or not value.strip():
            self.bad(key, f"must be a non-empty text (got {show(value)})")
            return default
        return value

    def integer(self, key: str, default: int | None, *, minimum: int | None = None) -> int | None:
        value = self.data.get(key)
        if value is None:
            return default
        if not _is_number(value) or not float(value).is_integer():
            bound = f" ≥ {minimum}" if minimum is not None else ""
            self.bad(key, f"must be a whole number{bound} (got {show(value)})")
            return None
        if minimum is not None and value < minimum:
            self.bad(key, f"must be ≥ {minimum} (got {show(value)})")
            return None
        return int(value)

    def number(
        self, key: str, default: float | None, *, minimum: float = 0.0, strict: bool = False
    ) -> float | None:
        """A number ≥ ``minimum`` (> when ``strict``); None (missing or null) → default."""
        value = self.data.get(key)
        if value is None:
            return default
        sign = ">" if strict else "≥"
        if not _is_number(value):
            self.bad(key, f"must be a number {sign} {show(float(minimum))} (got {show(value)})")
            return None
        if value < minimum or (strict and value == minimum):
            self.bad(key, f"must be {sign} {show(float(minimum))} (got {show(value)})")
            return None
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.bad(key, f"must be true or false (got {show(value)})")
            return default
        return value

    def listing(self, key: str) -> list[Any] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            self.bad(key, f"must be a list (got {show(value)})")
            return None
        return value

    def choice(self, key: str, default: str, options: Sequence[str]) -> str:
        value = self.data.get(key)
        if value is None:
            return default
        if value not in options:
            self.bad(key, f"must be one of {', '.join(options)} (got {show(value)})")
            return default
        return str(value)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_yaml(text: str, problems: Problems) -> Any:
    """The YAML document in ``text``; a syntax error is recorded (with line) and gives None."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problems.add("", f"bad YAML{' at ' + where if where else ''}: {problem}")
        return None
