"""Hostile templates, contact data, addresses and rules: each gets a clear outcome, nothing else is hurt."""

from __future__ import annotations

import asyncpg

from sender.config import Settings
from sender.demo.fakeses import FakeSES
from tests.helpers import add_campaign, add_template, recipient_counts, running_daemon, wait_for

HOSTILE_TEMPLATES = {
    "{{ ''.__class__.__mro__[1].__subclasses__() }}": "access to attribute '__class__'",
    "{{ first_name.__init__.__globals__ }}": "is not allowed",
    "{% for i in range(10**8) %}x{% endfor %}": "range() of 100000000 items exceeds the limit",
    "{{ 'x' * 10**9 }}": "repetition builds a value over the size limit",
    "{% include 'x.html' %}": "TemplateNotFound",
    # unbounded recursion: Python's recursion limit or the render budget, whichever a machine hits first
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}": ("RecursionError", "render budget"),
    "{{ first_name | no_such_filter }}": "No filter named 'no_such_filter'",
    "x" * 600_000: "larger than the 524288-byte limit",
}

HOSTILE_RULES = {
    '{"field": "phone", "op": "eq", "value": "x"}': "target_rules.field: unknown field 'phone'",
    '{"field": "country", "op": "regex", "value": ".*"}': "target_rules.op: unknown operator 'regex'",
    '{"field": "country", "op": "in", "value": "US"}': "target_rules.value: expected a non-empty list",
    '{"field": "attributes.x\'; DROP TABLE contacts; --", "op": "eq", "value": 1}': "attribute key",
}


async def test_bad_input_is_contained(db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    contacts = [
        ("html@example.org", "<script>alert('x')</script>", "O'Brien & <Sons>"),
        ("crlf@example.org", "Ann\r\nBcc: victim@example.com", "Lee"),
        ("unicode@example.org", "Zoë 日本語 🚀", "Ñúñez"),
        ("long@example.org", "L" * 50_000, "Long"),
        ("plain@example.org", "Plain", "Jane"),
    ]
    for email, first, last in contacts:
        await db.execute("INSERT INTO contacts (email, first_name, last_name) VALUES ($1, $2, $3)", email, first, last)
    good = await add_campaign(db, await add_template(db, subject="Hi {{ first_name }}",
                                                     html="<p>{{ first_name }} {{ last_name }}</p>"),
                              rules={"field": "email", "op": "ends_with", "value": "@example.org"})
    # addresses only the main app could have supplied: empty and malformed
    await db.execute("INSERT INTO campaign_recipients (campaign_id, email) VALUES ($1, ''), ($1, 'no-at-sign'), "
                     "($1, 'two@@example.org'), ($1, 'ok@bad_domain')", good)
    bad_templates = {}
    for source, expected in HOSTILE_TEMPLATES.items():
        bad_templates[await add_campaign(db, await add_template(db, html=source))] = expected
    bad_rules = {}
    for rules, expected in HOSTILE_RULES.items():
        cid = await add_campaign(db, await add_template(db), status="draft")
        await db.execute("UPDATE campaigns SET target_rules = $2::text::jsonb, status = 'queued' WHERE id = $1",
                         cid, rules)
        bad_rules[cid] = expected
    deleted = await add_campaign(db, await add_template(db))
    await db.execute("DELETE FROM templates WHERE id = (SELECT template_id FROM campaigns WHERE id = $1)", deleted)

    async with running_daemon(settings):
        await wait_for(lambda: _status(db, good, "sent"), timeout=60)
        for cid in [*bad_templates, *bad_rules, deleted]:
            await wait_for(lambda cid=cid: _status(db, cid, "failed"), timeout=30)

    errors = {r["id"]: r["error"] for r in await db.fetch("SELECT id, error FROM campaigns")}
    for cid, expected in {**bad_templates, **bad_rules}.items():
        alternatives = expected if isinstance(expected, tuple) else (expected,)
        assert any(text in errors[cid] for text in alternatives), (cid, errors[cid])
    assert "does not exist (deleted?)" in errors[deleted]
    assert await db.fetchval("SELECT count(*) FROM campaign_recipients WHERE campaign_id <> $1", good) == 0
    assert await db.fetchval("SELECT count(*) FROM contacts") == 5

    # the good campaign: every real contact got exactly one safe message; bad addresses failed clearly
    assert await recipient_counts(db, good) == {"sent": 5, "failed": 4}
    failed = await db.fetch("SELECT email, error_code, error FROM campaign_recipients WHERE status = 'failed'")
    assert {r["error_code"] for r in failed} == {"InvalidAddress"}
    assert all(r["error"] for r in failed)
    by_to = {m.to[0]: m for m in fake_ses.messages}
    assert set(by_to) == {c[0] for c in contacts}
    assert by_to["html@example.org"].html == (
        "<p>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; O&#39;Brien &amp; &lt;Sons&gt;</p>")
    assert by_to["crlf@example.org"].subject == "Hi Ann Bcc: victim@example.com"
    assert by_to["crlf@example.org"].to == ["crlf@example.org"]
    assert by_to["unicode@example.org"].subject == "Hi Zoë 日本語 🚀"
    assert by_to["unicode@example.org"].html == "<p>Zoë 日本語 🚀 Ñúñez</p>"
    assert by_to["long@example.org"].html == f"<p>{'L' * 50_000} Long</p>"
    assert len(by_to["long@example.org"].subject) == 998


async def _status(db: asyncpg.Connection, campaign: int, status: str) -> bool:
    return await db.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) == status
