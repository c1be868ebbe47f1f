"""Sandboxed rendering: escaping, header safety, missing values, hostile templates."""

from __future__ import annotations

import pytest

from sender.render import (
    CampaignTemplates,
    Contact,
    TemplateProblem,
    clean_subject,
    html_to_text,
)


def compile_(subject: str = "Hi {{ first_name }}", html: str = "<p>{{ first_name }}</p>",
             text: str | None = None, max_bytes: int = 100_000) -> CampaignTemplates:
    return CampaignTemplates(subject, html, text, max_bytes=max_bytes)


def test_missing_values_render_as_empty_strings() -> None:
    t = compile_(subject="Hi {{ first_name }} {{ attributes.tier }}!",
                 html="<p>{{ last_name }}|{{ country }}|{{ attributes.a.b.c }}|{{ nothing }}</p>")
    out = t.render(Contact(email="a@example.com"), unsubscribe_url="")
    assert out.subject == "Hi !"
    assert out.html == "<p>|||</p>"


def test_none_attribute_values_render_empty() -> None:
    out = compile_(html="<p>{{ attributes.x }}</p>").render(
        Contact(email="a@example.com", attributes={"x": None}), unsubscribe_url="")
    assert out.html == "<p></p>"


def test_html_escapes_contact_data_and_text_part_keeps_it_plain() -> None:
    t = compile_(html="<p>Dear {{ first_name }}</p>", text="Dear {{ first_name }}")
    out = t.render(Contact(email="a@example.com", first_name="<script>alert(1)</script>&"), unsubscribe_url="")
    assert out.html == "<p>Dear &lt;script&gt;alert(1)&lt;/script&gt;&amp;</p>"
    assert out.text == "Dear <script>alert(1)</script>&"


@pytest.mark.parametrize("name", ["Ann\r\nBcc: victim@example.com", "Ann\nX-Evil: 1", "Ann\u2028Bcc: x", "Ann\x00"])
def test_subject_can_never_carry_a_line_break(name: str) -> None:
    out = compile_(subject="Hello {{ first_name }}").render(
        Contact(email="a@example.com", first_name=name), unsubscribe_url="")
    assert "\r" not in out.subject and "\n" not in out.subject and "\u2028" not in out.subject
    assert out.subject.startswith("Hello Ann")


def test_subject_is_clipped_and_whitespace_folded() -> None:
    assert clean_subject("  a \t\t b  ") == "a b"
    assert len(clean_subject("x" * 5000)) == 998


def test_text_part_derived_from_html() -> None:
    text = html_to_text("<html><head><style>p{}</style></head><body><h1>Title</h1><p>One &amp; two</p>"
                        "<p>See <a href='https://e.com/x'>this</a></p><script>evil()</script></body></html>")
    assert text == "Title\n\nOne & two\n\nSee this (https://e.com/x)"


def test_non_ascii_and_long_values_render_intact() -> None:
    long = "é" * 20_000
    out = compile_().render(Contact(email="a@example.com", first_name="Zoë 日本 " + long), unsubscribe_url="")
    assert out.html == f"<p>Zoë 日本 {long}</p>"


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ first_name.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{% for i in range(10**9) %}{% endfor %}",
    "{{ 'x' * 10**9 }}",
    "{{ [1] * 10**8 }}",
    "{{ 2 ** 1000 }}",
    "{{ 99 ** 99 ** 99 ** 99 }}",
    "{% include 'other.html' %}",
    "{% extends 'base.html' %}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{{ lipsum(10**6) }}",
])
def test_template_escape_attempts_fail_the_campaign(source: str) -> None:
    with pytest.raises(TemplateProblem):
        compile_(html=source)


def test_undefined_filter_fails_at_compile_time_with_line() -> None:
    with pytest.raises(TemplateProblem, match="content_html line 2 does not compile: No filter named 'shout'"):
        compile_(html="<p>\n{{ first_name | shout }}</p>")


def test_template_over_size_limit_is_refused() -> None:
    with pytest.raises(TemplateProblem, match="content_html is larger than the 100-byte limit"):
        compile_(html="x" * 101, max_bytes=100)


def test_one_contact_that_breaks_rendering_fails_only_that_render() -> None:
    t = compile_(html="{{ 100 // attributes.n }}")
    assert t.render(Contact(email="a@example.com", attributes={"n": 4}), unsubscribe_url="").html == "25"
    with pytest.raises(TemplateProblem, match="ZeroDivisionError"):
        t.render(Contact(email="a@example.com", attributes={"n": 0}), unsubscribe_url="")


@pytest.mark.parametrize(("html", "text"), [
    ("<p>a</p><!-- <p>hidden</p> --><p>b</p>", "a\n\nb"),
    ("<a href='https://e.com/a'>A</a> and <a href=https://e.com/b>B</a>", "A (https://e.com/a) and B (https://e.com/b)"),
    ('<a href="javascript:evil()">click</a>', "click"),
    ('<A HREF="mailto:x@e.com">mail</A>', "mail (mailto:x@e.com)"),
    ("<SCRIPT type='x'>alert(1)</SCRIPT>ok &lt;3 &amp; &#169;", "ok <3 & ©"),
    ("line<br>next<br/>last", "line\nnext\nlast"),
    ("no tags at all", "no tags at all"),
])
def test_html_to_text_edge_cases(html: str, text: str) -> None:
    assert html_to_text(html) == text
