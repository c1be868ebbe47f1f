"""target_rules JSON -> a parameterised SQL predicate over `contacts c` (SPEC §4).

Columns come from a whitelist and every value is a bound parameter, so no rule can inject SQL.
Errors name the offending part by its path (e.g. `target_rules.all[1].op`).
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

COLUMNS = {
    "email": "c.email",
    "first_name": "c.first_name",
    "last_name": "c.last_name",
    "country": "c.country",
    "created_at": "c.created_at",
}
OPERATORS = (
    "eq", "neq", "in", "not_in", "contains", "starts_with", "ends_with",
    "exists", "gt", "gte", "lt", "lte",
)
_COMPARE = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_ATTRIBUTE_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_DEPTH = 20
MAX_PARAMS = 10_000


class RuleError(ValueError):
    """Invalid target_rules; the message names the offending part."""


@dataclass
class _Compiler:
    first_param: int
    params: list[Any] = field(default_factory=list)

    def bind(self, value: Any, cast: str) -> str:
        if len(self.params) >= MAX_PARAMS:
            raise RuleError(f"target_rules: more than {MAX_PARAMS} values")
        self.params.append(value)
        return f"${self.first_param + len(self.params) - 1}::{cast}"

    def node(self, rule: Any, path: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise RuleError(f"{path}: rules nested deeper than {MAX_DEPTH} levels")
        if not isinstance(rule, dict):
            raise RuleError(f"{path}: expected an object, got {_kind(rule)}")
        if "all" in rule or "any" in rule:
            key = "all" if "all" in rule else "any"
            _only_keys(rule, {key}, path)
            items = rule[key]
            if not isinstance(items, list):
                raise RuleError(f"{path}.{key}: expected a list of rules, got {_kind(items)}")
            if not items:
                return "true" if key == "all" else "false"
            joiner = " AND " if key == "all" else " OR "
            return "(" + joiner.join(
                self.node(item, f"{path}.{key}[{i}]", depth + 1) for i, item in enumerate(items)
            ) + ")"
        if "not" in rule:
            _only_keys(rule, {"not"}, path)
            return f"(NOT coalesce({self.node(rule['not'], f'{path}.not', depth + 1)}, false))"
        if "field" in rule or "op" in rule:
            return self.condition(rule, path)
        return self.shorthand(rule, path)

    def shorthand(self, rule: dict[str, Any], path: str) -> str:
        """{"country": ["US", "CA"], "first_name": "Ann"}: field-in-values / equals, ANDed."""
        if not rule:
            return "true"
        parts = []
        for name, value in rule.items():
            op = "in" if isinstance(value, list) else "eq"
            parts.append(self.condition({"field": name, "op": op, "value": value}, f"{path}.{name}"))
        return "(" + " AND ".join(parts) + ")"

    def condition(self, rule: dict[str, Any], path: str) -> str:
        _only_keys(rule, {"field", "op", "value"}, path)
        name, op = rule.get("field"), rule.get("op")
        if not isinstance(name, str):
            raise RuleError(f"{path}.field: expected a field name, got {_kind(name)}")
        if op not in OPERATORS:
            raise RuleError(
                f"{path}.op: unknown operator {op!r} (expected one of {', '.join(OPERATORS)})"
            )
        if op == "exists":
            if "value" in rule and not isinstance(rule["value"], bool):
                raise RuleError(f"{path}.value: 'exists' takes true/false or no value")
            wanted = rule.get("value", True)
            test = self.exists(name, path)
            return test if wanted else f"(NOT {test})"
        if "value" not in rule:
            raise RuleError(f"{path}.value: operator {op!r} needs a value")
        value = rule["value"]
        if name.startswith("attributes."):
            return self.attribute(name.removeprefix("attributes."), op, value, path)
        if name not in COLUMNS:
            raise RuleError(
                f"{path}.field: unknown field {name!r} "
                f"(expected one of {', '.join(COLUMNS)} or attributes.<key>)"
            )
        if name == "created_at":
            return self.timestamp(op, value, path)
        return self.text(COLUMNS[name], name == "email", op, value, path)

    def exists(self, name: str, path: str) -> str:
        if name.startswith("attributes."):
            key = _attribute_key(name, path)
            return f"(c.attributes ? {self.bind(key, 'text')})"
        if name not in COLUMNS:
            raise RuleError(f"{path}.field: unknown field {name!r}")
        column = COLUMNS[name]
        if name == "created_at":
            return f"({column} IS NOT NULL)"
        return f"(coalesce({column}, '') <> '')"

    def text(self, column: str, fold: bool, op: str, value: Any, path: str) -> str:
        """Text columns: eq/in exact (email compared case-insensitively); substring ops ignore case."""
        if op in ("in", "not_in"):
            values = _scalar_list(value, path, (str,))
            if fold:
                values = [v.lower() for v in values]
            expr = f"lower({column})" if fold else column
            test = f"({expr} = ANY({self.bind(values, 'text[]')}))"
            return test if op == "in" else f"(NOT coalesce({test}, false))"
        text = _scalar(value, path, (str,))
        if op in ("contains", "starts_with", "ends_with"):
            needle = self.bind(text.lower(), "text")
            hay = f"lower({column})"
            if op == "contains":
                return f"(strpos({hay}, {needle}) > 0)"
            if op == "starts_with":
                return f"starts_with({hay}, {needle})"
            return f"(right({hay}, length({needle})) = {needle})"
        expr, bound = (f"lower({column})", text.lower()) if fold else (column, text)
        if op == "neq":  # a contact with no value is "not equal" too
            return f"({expr} IS DISTINCT FROM {self.bind(bound, 'text')})"
        return f"({expr} {_COMPARE[op]} {self.bind(bound, 'text')})"

    def timestamp(self, op: str, value: Any, path: str) -> str:
        if op not in _COMPARE and op not in ("in", "not_in"):
            raise RuleError(f"{path}.op: operator {op!r} does not apply to created_at")
        if op in ("in", "not_in"):
            stamps = [_datetime(v, path) for v in _scalar_list(value, path, (str,))]
            test = f"(c.created_at = ANY({self.bind(stamps, 'timestamptz[]')}))"
            return test if op == "in" else f"(NOT {test})"
        stamp = _datetime(_scalar(value, path, (str,)), path)
        return f"(c.created_at {_COMPARE[op]} {self.bind(stamp, 'timestamptz')})"

    def attribute(self, key_name: str, op: str, value: Any, path: str) -> str:
        """attributes.<key>: typed jsonb comparison (numbers numerically), substring ops on text."""
        key = _attribute_key("attributes." + key_name, path)
        k = self.bind(key, "text")
        if op in ("in", "not_in"):
            values = _scalar_list(value, path, (str, int, float, bool))
            # values bind as jsonb through the connection's JSON codec (sender.db.pool)
            test = f"((c.attributes -> {k}) = ANY({self.bind(values, 'jsonb[]')}))"
            return test if op == "in" else f"(NOT coalesce({test}, false))"
        scalar = _scalar(value, path, (str, int, float, bool))
        if op in ("contains", "starts_with", "ends_with"):
            if not isinstance(scalar, str):
                raise RuleError(f"{path}.value: {op!r} needs a string, got {_kind(scalar)}")
            hay = f"lower(c.attributes ->> {k})"
            needle = self.bind(scalar.lower(), "text")
            if op == "contains":
                return f"coalesce(strpos({hay}, {needle}) > 0, false)"
            if op == "starts_with":
                return f"coalesce(starts_with({hay}, {needle}), false)"
            return f"coalesce(right({hay}, length({needle})) = {needle}, false)"
        doc = self.bind(scalar, "jsonb")
        if op in ("gt", "gte", "lt", "lte"):
            if isinstance(scalar, bool):
                raise RuleError(f"{path}.value: {op!r} needs a number or string, got a boolean")
            # only compare like with like: jsonb orders types before values
            return (
                f"(jsonb_typeof(c.attributes -> {k}) = jsonb_typeof({doc}) "
                f"AND (c.attributes -> {k}) {_COMPARE[op]} {doc})"
            )
        test = f"((c.attributes -> {k}) {_COMPARE[op]} {doc})"
        return f"coalesce({test}, {'true' if op == 'neq' else 'false'})"


def compile_rules(rules: Any, *, first_param: int = 2) -> tuple[str, list[Any]]:
    """Compile target_rules to (predicate, params); params are numbered from first_param."""
    if isinstance(rules, str):
        try:
            rules = json.loads(rules)
        except json.JSONDecodeError as exc:
            raise RuleError(f"target_rules: not valid JSON ({exc.msg})") from None
    compiler = _Compiler(first_param)
    predicate = compiler.node(rules, "target_rules", 0)
    return predicate, compiler.params


def _only_keys(rule: dict[str, Any], allowed: set[str], path: str) -> None:
    extra = sorted(set(rule) - allowed)
    if extra:
        raise RuleError(f"{path}: unexpected key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _attribute_key(name: str, path: str) -> str:
    key = name.removeprefix("attributes.")
    if not _ATTRIBUTE_KEY.match(key):
        raise RuleError(
            f"{path}.field: attribute key {key!r} must be 1-64 letters, digits, '_' or '-'"
        )
    return key


def _scalar(value: Any, path: str, types: tuple[type, ...], where: str = ".value") -> Any:
    if isinstance(value, bool) and bool not in types:
        raise RuleError(f"{path}{where}: expected {_names(types)}, got a boolean")
    if not isinstance(value, types):
        raise RuleError(f"{path}{where}: expected {_names(types)}, got {_kind(value)}")
    if isinstance(value, str) and "\x00" in value:
        raise RuleError(f"{path}{where}: contains a NUL character")
    if isinstance(value, float) and not math.isfinite(value):
        # 1e999 parses as infinity: it would silently match nobody (or everybody)
        raise RuleError(f"{path}{where}: {value!r} is not a finite number")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max:
        # jsonb keeps 1e999 exactly and hands it back as a 1000-digit integer
        raise RuleError(f"{path}{where}: number out of range (beyond ±1.8e308)")
    return value


def _scalar_list(value: Any, path: str, types: tuple[type, ...]) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise RuleError(f"{path}.value: expected a non-empty list, got {_kind(value)}")
    return [_scalar(v, path, types, f".value[{i}]") for i, v in enumerate(value)]


def _datetime(value: str, path: str) -> datetime:
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise RuleError(f"{path}.value: {value!r} is not an ISO 8601 date/time") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp


def _names(types: tuple[type, ...]) -> str:
    names = {str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return " or ".join(dict.fromkeys(names[t] for t in types))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
