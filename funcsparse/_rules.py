"""Which leaf gets which method: exact paths, glob patterns, precedence and their errors.

A rules mapping has leaf paths or glob patterns as keys and methods (or None) as values.

* A key equal to a leaf path is an exact rule, whatever characters it holds.
* Otherwise ``*`` matches any run of characters inside one path component (no ``.``),
  ``**`` any run including dots (``**.`` also matches no component at all, so
  ``"**.weight"`` matches ``"weight"`` and ``"a.b.weight"``), ``?`` one character other
  than ``.``, ``[abc]`` / ``[!abc]`` one character (not ``.``) of / not of the set, as in
  fnmatch. A ``[`` without a closing ``]`` is a literal ``[``.
* An exact path beats every pattern. Two patterns that match the same leaf, with no exact
  path for it, are an error naming both.
* A key that matches no leaf is an error: a typo must not silently prune nothing.
* A value of None leaves the matched leaves unpruned, e.g. ``{"**.weight": method,
  "head.weight": None}`` prunes every weight but the head's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from funcsparse._errors import describe, short_repr
from funcsparse.methods._base import MaskMethod

__all__ = ["Assignment", "assign_rules", "glob_to_regex", "is_pattern"]

_PATTERN_CHARS = frozenset("*?[")


class Assignment(NamedTuple):
    """The rule that applies to one leaf: its key and its method."""

    key: str
    method: MaskMethod


def is_pattern(key: str) -> bool:
    """Whether ``key`` is a glob pattern rather than an exact path."""
    return any(char in _PATTERN_CHARS for char in key)


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a path glob (see the module docstring) into a regex for ``fullmatch``."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**.", i):
            out.append(r"(?:.*\.)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append(r"[^.]*")
            i += 1
        elif char == "?":
            out.append(r"[^.]")
            i += 1
        elif char == "[" and (end := _class_end(pattern, i)) > 0:
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            members = "".join("\\" + c if c in "\\^[]" else c for c in body[negate:])
            out.append(r"(?!\.)[" + ("^" if negate else "") + members + "]")
            i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return re.compile("".join(out))


def _class_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the class opened at ``start``, or -1 (a literal ``[``)."""
    first = start + 1 + (pattern[start + 1 : start + 2] == "!")
    end = pattern.find("]", first + 1)  # a ``]`` right after ``[`` or ``[!`` is a member
    return end


def assign_rules(paths: Sequence[str], rules: object, *, function: str) -> list[Assignment | None]:
    """The rule of every leaf path, in order (None: no rule, or a rule whose value is None).

    Raises:
        TypeError: ``rules`` is not a mapping of str to MaskMethod or None.
        ValueError: a key matches no leaf, or two patterns match one leaf.
    """
    if not isinstance(rules, Mapping):
        raise TypeError(
            f"{function}: rules must be a mapping of leaf paths or patterns to methods, "
            f"got {describe(rules)}"
        )
    known = set(paths)
    exact: dict[str, MaskMethod | None] = {}
    patterns: list[tuple[str, re.Pattern[str], MaskMethod | None]] = []
    for key, method in rules.items():
        if not isinstance(key, str):
            raise TypeError(
                f"{function}: rule keys must be str paths or patterns, got {describe(key)}"
            )
        if method is not None and not isinstance(method, MaskMethod):
            hint = (
                f" (a class: write {method.__name__}(...) with its level)"
                if isinstance(method, type) and issubclass(method, MaskMethod)
                else ""
            )
            raise TypeError(
                f"{function}: rule {short_repr(key)} must map to a funcsparse method or None, "
                f"got {describe(method)}{hint}"
            )
        if key in known or not is_pattern(key):
            exact[key] = method
            continue
        try:
            patterns.append((key, glob_to_regex(key), method))
        except re.error as err:
            raise ValueError(
                f"{function}: rule pattern {short_repr(key)} is not a valid glob ({err})"
            ) from None

    matched: set[str] = set()
    assignments: list[Assignment | None] = []
    for path in paths:
        hits = [(key, method) for key, regex, method in patterns if regex.fullmatch(path)]
        matched.update(key for key, _ in hits)
        if path in exact:
            matched.add(path)
            method = exact[path]
            assignments.append(None if method is None else Assignment(path, method))
            continue
        if len(hits) > 1:
            first, second, leaf = (short_repr(text) for text in (hits[0][0], hits[1][0], path))
            raise ValueError(
                f"{function}: patterns {first} and {second} both match leaf {leaf}; add an "
                f"exact rule for {leaf} or narrow a pattern"
            )
        hit_method = hits[0][1] if hits else None
        assignments.append(None if hit_method is None else Assignment(hits[0][0], hit_method))

    for key in list(exact) + [key for key, _, _ in patterns]:
        if key not in matched:
            kind = "path" if key in exact else "pattern"
            sample = ", ".join(short_repr(path) for path in list(paths)[:8])
            more = ", ..." if len(paths) > 8 else ""
            raise ValueError(
                f"{function}: rule {kind} {short_repr(key)} matches no leaf; the leaves are "
                f"[{sample}{more}]"
            )
    return assignments
