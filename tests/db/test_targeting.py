"""target_rules compile to parameterised SQL that selects exactly the intended contacts."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from sender.campaigns import materialise_sql
from sender.targeting import RuleError, compile_rules


async def _seed(db: asyncpg.Connection) -> None:
    people = [
        ("ann@Shop.com", "Ann", "Lee", "US", {"plan": "pro", "age": 31, "vip": True}, "2024-01-10"),
        ("bob@mail.org", "Bob", "Stone", "CA", {"plan": "free", "age": 25}, "2024-03-01"),
        ("cara@shop.com", "Cara", None, "GB", {"plan": "pro", "age": "unknown"}, "2024-06-15"),
        ("dan@mail.org", None, "Ng", None, {}, "2025-01-01"),
        ("eve@gone.net", "Eve", "X", "US", {"plan": "pro"}, "2024-02-02"),
    ]
    for email, first, last, country, attrs, created in people:
        await db.execute(
            "INSERT INTO contacts (email, first_name, last_name, country, attributes, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6::date)", email, first, last, country, attrs,
            __import__("datetime").date.fromisoformat(created))
    await db.execute("UPDATE contacts SET status = 'unsubscribed' WHERE email = 'eve@gone.net'")
    await db.execute("INSERT INTO templates (id, name) VALUES (1, 't')")
    await db.execute("INSERT INTO campaigns (id, name, template_id) VALUES (1, 'c', 1)")


async def _select(db: asyncpg.Connection, rules: Any) -> list[str]:
    await db.execute("DELETE FROM campaign_recipients")
    sql, params = materialise_sql(rules)
    await db.execute(sql, 1, 0, 1000, "me", *params)  # campaign 1, from the start, one chunk
    rows = await db.fetch("SELECT email FROM campaign_recipients ORDER BY email")
    return [r["email"].split("@")[0] for r in rows]


@pytest.mark.parametrize(("rules", "expected"), [
    ({}, ["ann", "bob", "cara", "dan"]),
    ({"field": "country", "op": "eq", "value": "US"}, ["ann"]),
    ({"field": "country", "op": "neq", "value": "US"}, ["bob", "cara", "dan"]),
    ({"field": "country", "op": "in", "value": ["CA", "GB"]}, ["bob", "cara"]),
    ({"field": "country", "op": "not_in", "value": ["CA", "GB"]}, ["ann", "dan"]),
    ({"field": "email", "op": "eq", "value": "ANN@shop.com"}, ["ann"]),
    ({"field": "email", "op": "ends_with", "value": "@shop.com"}, ["ann", "cara"]),
    ({"field": "email", "op": "starts_with", "value": "B"}, ["bob"]),
    ({"field": "first_name", "op": "contains", "value": "AR"}, ["cara"]),
    ({"field": "last_name", "op": "exists"}, ["ann", "bob", "dan"]),
    ({"field": "last_name", "op": "exists", "value": False}, ["cara"]),
    ({"field": "created_at", "op": "gte", "value": "2024-03-01"}, ["bob", "cara", "dan"]),
    ({"field": "created_at", "op": "lt", "value": "2024-03-01T00:00:00+00:00"}, ["ann"]),
    ({"field": "created_at", "op": "lte", "value": "2024-03-01"}, ["ann", "bob"]),
    ({"field": "created_at", "op": "gt", "value": "2024-12-31"}, ["dan"]),
    ({"field": "attributes.plan", "op": "eq", "value": "pro"}, ["ann", "cara"]),
    ({"field": "attributes.plan", "op": "neq", "value": "pro"}, ["bob", "dan"]),
    ({"field": "attributes.age", "op": "gt", "value": 26}, ["ann"]),
    ({"field": "attributes.age", "op": "lte", "value": 25}, ["bob"]),
    ({"field": "attributes.age", "op": "in", "value": [25, 31]}, ["ann", "bob"]),
    ({"field": "attributes.plan", "op": "not_in", "value": ["pro"]}, ["bob", "dan"]),
    ({"field": "attributes.vip", "op": "eq", "value": True}, ["ann"]),
    ({"field": "attributes.vip", "op": "exists"}, ["ann"]),
    ({"field": "attributes.plan", "op": "starts_with", "value": "FR"}, ["bob"]),
    ({"field": "attributes.plan", "op": "contains", "value": "r"}, ["ann", "bob", "cara"]),
    ({"field": "attributes.plan", "op": "ends_with", "value": "ee"}, ["bob"]),
    ({"all": [{"country": ["US", "GB"]}, {"field": "attributes.plan", "op": "eq", "value": "pro"}]}, ["ann", "cara"]),
    ({"any": [{"field": "country", "op": "eq", "value": "CA"},
              {"field": "first_name", "op": "exists", "value": False}]}, ["bob", "dan"]),
    ({"not": {"field": "country", "op": "in", "value": ["US", "CA"]}}, ["cara", "dan"]),
    ({"country": ["US", "CA"], "first_name": "Bob"}, ["bob"]),
    ({"all": []}, ["ann", "bob", "cara", "dan"]),
    ({"any": []}, []),
])
async def test_rule_selects_expected_subscribed_contacts(db: asyncpg.Connection, rules: Any,
                                                        expected: list[str]) -> None:
    await _seed(db)
    assert await _select(db, rules) == expected


@pytest.mark.parametrize("hostile", [
    "'; DROP TABLE contacts; --",
    "US' OR '1'='1",
    "$1",
    "%",
    "\\",
    "US) OR (1=1",
])
async def test_hostile_values_are_data_not_sql(db: asyncpg.Connection, hostile: str) -> None:
    await _seed(db)
    for op in ("eq", "contains", "starts_with", "ends_with"):
        assert await _select(db, {"field": "country", "op": op, "value": hostile}) == []
    assert await _select(db, {"field": "attributes.plan", "op": "in", "value": [hostile]}) == []
    assert await db.fetchval("SELECT count(*) FROM contacts") == 5


async def test_materialisation_is_idempotent(db: asyncpg.Connection) -> None:
    await _seed(db)
    sql, params = materialise_sql({})
    await db.execute(sql, 1, 0, 1000, "me", *params)
    await db.execute(sql, 1, 0, 1000, "me", *params)
    assert await db.fetchval("SELECT count(*) FROM campaign_recipients") == 4


@pytest.mark.parametrize(("rules", "message"), [
    ({"field": "phone", "op": "eq", "value": "1"}, "target_rules.field: unknown field 'phone'"),
    ({"all": [{"field": "country", "op": "like", "value": "U%"}]}, "target_rules.all[0].op: unknown operator 'like'"),
    ({"field": "country", "op": "in", "value": "US"}, "target_rules.value: expected a non-empty list, got a string"),
    ({"field": "country", "op": "in", "value": []}, "target_rules.value: expected a non-empty list"),
    ({"field": "country", "op": "eq", "value": 5}, "target_rules.value: expected a string, got a number"),
    ({"field": "country", "op": "eq"}, "target_rules.value: operator 'eq' needs a value"),
    ({"field": "created_at", "op": "gt", "value": "yesterday"}, "is not an ISO 8601 date/time"),
    ({"field": "created_at", "op": "contains", "value": "2024"}, "does not apply to created_at"),
    ({"field": "attributes.a;b", "op": "eq", "value": 1}, "attribute key 'a;b'"),
    ({"field": "attributes.age", "op": "gt", "value": True}, "needs a number or string, got a boolean"),
    ({"any": {"country": "US"}}, "target_rules.any: expected a list of rules, got an object"),
    ({"not": [1]}, "target_rules.not: expected an object, got a list"),
    ({"field": "country", "op": "eq", "value": "US", "extra": 1}, "unexpected key 'extra'"),
    ({"country": ["US", 3]}, "target_rules.country.value[1]: expected a string, got a number"),
    ([], "target_rules: expected an object, got a list"),
    ("{not json", "target_rules: not valid JSON"),
])
def test_invalid_rules_name_the_offending_part(rules: Any, message: str) -> None:
    with pytest.raises(RuleError) as err:
        compile_rules(rules)
    assert message in str(err.value)


def test_deeply_nested_rules_are_refused() -> None:
    rules: Any = {"field": "country", "op": "eq", "value": "US"}
    for _ in range(30):
        rules = {"not": rules}
    with pytest.raises(RuleError, match="nested deeper"):
        compile_rules(rules)


def test_compiled_sql_holds_no_values() -> None:
    sql, params = compile_rules({"field": "country", "op": "eq", "value": "'; DROP TABLE x; --"})
    assert "DROP" not in sql
    assert params == ["'; DROP TABLE x; --"]


@pytest.mark.parametrize(("rules", "message"), [
    ('{"field": "attributes.age", "op": "gt", "value": 1e999}', "target_rules.value: inf is not a finite number"),
    ('{"field": "attributes.age", "op": "lt", "value": -1e999}', "target_rules.value: -inf is not a finite number"),
    ('{"field": "attributes.age", "op": "eq", "value": NaN}', "target_rules.value: nan is not a finite number"),
    ('{"all": [{"field": "attributes.age", "op": "in", "value": [1, Infinity]}]}',
     "target_rules.all[0].value[1]: inf is not a finite number"),
    ({"any": [{"attributes.score": [float("inf")]}]}, "target_rules.any[0].attributes.score.value[0]: inf"),
])
def test_non_finite_numbers_are_refused_naming_the_path(rules: Any, message: str) -> None:
    with pytest.raises(RuleError) as err:
        compile_rules(rules)
    assert message in str(err.value)


async def test_1e999_stored_in_jsonb_is_refused_naming_the_path(db: asyncpg.Connection) -> None:
    """jsonb keeps 1e999 as an exact numeric (a 1000-digit integer once decoded): refused, not matched."""
    await _seed(db)
    await db.execute("""UPDATE campaigns
                           SET target_rules = '{"field": "attributes.age", "op": "gt", "value": 1e999}'""")
    stored = await db.fetchval("SELECT target_rules FROM campaigns WHERE id = 1")
    with pytest.raises(RuleError, match=r"target_rules\.value: number out of range"):
        compile_rules(stored)
