"""Sandboxed Jinja2 rendering: each campaign's templates compiled once, rendered per contact.

HTML autoescapes contact data; subjects are single-line plain text (no header injection);
string/list multiplication, powers and ranges are bounded so a template cannot eat the CPU.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from html import unescape
from typing import Any

from jinja2 import ChainableUndefined, DictLoader, TemplateError, TemplateNotFound
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

MAX_LOOP_ITEMS = 10_000
MAX_PRODUCT_LENGTH = 100_000
MAX_SUBJECT_LENGTH = 998
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
_SPACES = re.compile(r"[ \t]+")


class TemplateProblem(Exception):
    """A template that cannot render; the message says which part and why.

    `data_dependent` problems (a missing value in arithmetic, say) fail one recipient; the others
    (sandbox violations, includes, runaway loops) fail the whole campaign.
    """

    def __init__(self, message: str, *, data_dependent: bool = False) -> None:
        super().__init__(message)
        self.data_dependent = data_dependent


_TEMPLATE_WIDE = (SecurityError, RecursionError, TemplateNotFound)


def _bounded_range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_LOOP_ITEMS:
        raise SecurityError(f"range() of {len(r)} items exceeds the limit of {MAX_LOOP_ITEMS}")
    return r


def _disabled(*_args: Any, **_kwargs: Any) -> None:
    raise SecurityError("lipsum() is disabled in campaign templates")


class CampaignSandbox(SandboxedEnvironment):
    """Jinja2's sandbox, plus bounds on the operators that can build huge values."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(
            autoescape=autoescape,
            undefined=ChainableUndefined,
            finalize=lambda value: "" if value is None else value,
            loader=DictLoader({}),  # include/extends/import find nothing: a campaign-wide error
        )
        self.globals["range"] = _bounded_range
        self.globals["lipsum"] = _disabled  # lipsum(n=10**6) is a cheap way to burn CPU

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        """Touching __class__, __globals__ and friends is an error, not a silent empty string."""
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} is not allowed")

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if isinstance(right, (int, float)) and abs(right) > 100:
                raise SecurityError("exponent too large")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() * abs(right) > 64_000:
                raise SecurityError("power builds a number over the size limit")
            return operator.pow(left, right)
        if isinstance(left, (str, list, tuple)) or isinstance(right, (str, list, tuple)):
            seq, times = (left, right) if isinstance(left, (str, list, tuple)) else (right, left)
            if isinstance(times, int) and len(seq) * times > MAX_PRODUCT_LENGTH:
                raise SecurityError("repetition builds a value over the size limit")
        return operator.mul(left, right)


HTML_ENV = CampaignSandbox(autoescape=True)
TEXT_ENV = CampaignSandbox(autoescape=False)


@dataclass(frozen=True)
class Contact:
    email: str
    first_name: str | None = None
    last_name: str | None = None
    country: str | None = None
    attributes: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    html: str
    text: str


def clean_subject(raw: str) -> str:
    """One line of plain text: CR, LF and other controls become spaces, so nothing can add a header."""
    line = _SPACES.sub(" ", _LINE_BREAKS.sub(" ", raw)).strip()
    return line[:MAX_SUBJECT_LENGTH]


class CampaignTemplates:
    """The subject, HTML and text templates of one campaign, compiled once."""

    def __init__(self, subject: str, html: str, text: str | None, *, max_bytes: int) -> None:
        for part, source in (("subject", subject), ("content_html", html), ("content_text", text)):
            if source is not None and len(source.encode("utf-8", "replace")) > max_bytes:
                raise TemplateProblem(f"template {part} is larger than the {max_bytes}-byte limit")
        self._subject = self._compile(TEXT_ENV, subject or "", "subject")
        self._html = self._compile(HTML_ENV, html or "", "content_html")
        self._text = self._compile(TEXT_ENV, text, "content_text") if text else None
        # A render with no contact data catches template-wide failures (includes, bad calls,
        # sandbox violations) before any mail goes out.
        try:
            self.render(Contact(email="preview@example.invalid"), unsubscribe_url="")
        except TemplateProblem as exc:
            if not exc.data_dependent:
                raise

    @staticmethod
    def _compile(env: CampaignSandbox, source: str, part: str) -> Callable[[dict[str, Any]], str]:
        try:
            template = env.from_string(source)
        except TemplateError as exc:
            lineno = getattr(exc, "lineno", None)
            line = f" line {lineno}" if lineno else ""
            raise TemplateProblem(f"template {part}{line} does not compile: {exc.message or exc}") from None
        return template.render

    def render(self, contact: Contact, *, unsubscribe_url: str) -> RenderedMessage:
        context = {
            "email": contact.email,
            "first_name": contact.first_name or "",
            "last_name": contact.last_name or "",
            "country": contact.country or "",
            "attributes": dict(contact.attributes or {}),
            "unsubscribe_url": unsubscribe_url,
        }
        try:
            subject = clean_subject(self._subject(context))
            html = self._html(context)
            text = self._text(context) if self._text else html_to_text(html)
        except (TemplateError, SecurityError, ArithmeticError, TypeError, ValueError, RecursionError,
                LookupError, AttributeError) as exc:
            raise TemplateProblem(
                f"template does not render: {type(exc).__name__}: {exc}",
                data_dependent=not isinstance(exc, _TEMPLATE_WIDE),
            ) from None
        return RenderedMessage(subject=subject, html=html, text=text)


_HIDDEN_BLOCKS = re.compile(r"<(script|style|head|title)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENTS = re.compile(r"<!--.*?-->", re.DOTALL)
_LINKS = re.compile(r"""<a\b[^>]*?\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))[^>]*>(.*?)</a\s*>""",
                    re.IGNORECASE | re.DOTALL)
_BLOCK_TAGS = re.compile(r"</?(?:p|div|br|li|tr|h[1-6]|table|ul|ol)\b[^>]*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^>]+>")


def _link(match: re.Match[str]) -> str:
    href = match.group(1) or match.group(2) or match.group(3) or ""
    text = match.group(4)
    return f"{text} ({href})" if href.startswith(("http://", "https://", "mailto:")) else text


def html_to_text(html: str) -> str:
    """A readable plain-text part from HTML: blocks become lines, links keep their target.

    Regular expressions rather than html.parser: this runs once per message on the hot path.
    """
    text = _HIDDEN_BLOCKS.sub("", _COMMENTS.sub("", html))
    text = _LINKS.sub(_link, text)
    text = _ANY_TAG.sub("", _BLOCK_TAGS.sub("\n", text))
    lines = (_SPACES.sub(" ", line).strip() for line in unescape(text).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()

