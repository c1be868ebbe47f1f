"""Sandboxed Jinja2 rendering: each campaign's templates compiled once, rendered per contact.

HTML autoescapes contact data; subjects are single-line plain text (no header injection). Every
render runs under a budget (sender.budget): loop iterations, bytes and CPU time, checked from inside,
so no template can freeze the daemon; whatever a hostile template raises becomes TemplateProblem.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import ChainableUndefined, DictLoader, Template, TemplateError, TemplateNotFound, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from sender import budget as rb
from sender.budget_filters import account, budgeted_filter, check_replace
from sender.budget_syntax import INTERNAL_FILTERS, Instrument
from sender.htmltext import html_to_text

MAX_LOOP_ITEMS = 10_000
MAX_PRODUCT_LENGTH = 100_000
MAX_SUBJECT_LENGTH = 998
DEFAULT_BUDGET_MS = 50.0
DEFAULT_MESSAGE_MAX_BYTES = 1024 * 1024
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
_SPACES = re.compile(r"[ \t]+")
_SEQUENCES = (str, bytes, list, tuple)
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


class TemplateProblem(Exception):
    """A template that cannot render; the message says which part and why.

    `data_dependent` problems (a missing value in arithmetic, say) fail one recipient; the others
    (sandbox violations, includes, runaway loops) fail the whole campaign. `code` is the recipient's
    error_code: "TemplateBudget" when the render went over its budget, else "TemplateError".
    """

    def __init__(self, message: str, *, data_dependent: bool = False, code: str = "TemplateError") -> None:
        super().__init__(message)
        self.data_dependent = data_dependent
        self.code = code


_TEMPLATE_WIDE = (SecurityError, RecursionError, TemplateNotFound)


def _bounded_range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_LOOP_ITEMS:
        raise SecurityError(f"range() of {len(r)} items exceeds the limit of {MAX_LOOP_ITEMS}")
    return r


def _disabled(*_args: Any, **_kwargs: Any) -> None:
    raise SecurityError("lipsum() is disabled in campaign templates")


def _finalize(value: Any) -> Any:
    """Every `{{ }}` output: None prints as nothing; the value counts against the budget."""
    if value is None:
        return ""
    budget = rb.active()
    if budget is not None:
        if isinstance(value, str):
            budget.produced(len(value))
        else:
            budget.check_value(value)
    return value


class CampaignSandbox(SandboxedEnvironment):
    """Jinja2's sandbox, plus bounds on the operators that can build huge values, the render budget
    on every call, attribute, filter, loop and output, and dict keys before dict methods."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(
            autoescape=autoescape,
            undefined=ChainableUndefined,
            finalize=_finalize,
            loader=DictLoader({}),  # include/extends/import find nothing: a campaign-wide error
        )
        self.globals["range"] = _bounded_range
        self.globals["lipsum"] = _disabled  # lipsum(n=10**6) is a cheap way to burn CPU
        self.filters = {name: budgeted_filter(name, f) for name, f in self.filters.items()}
        self.filters.update(INTERNAL_FILTERS)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        Instrument().visit(tree)
        return tree

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        """Touching __class__, __globals__ and friends is an error, not a silent empty string."""
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} is not allowed")

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`attributes.items` is the contact's `items` value, not dict.items."""
        budget = rb.active()
        if budget is not None:
            budget.iterate_free()
        if type(obj) is dict and attribute in obj:
            value = obj[attribute]
        else:
            value = super().getattr(obj, attribute)
        if budget is not None and isinstance(value, str):
            budget.check_value(value)
        return value

    def getitem(self, obj: Any, argument: Any) -> Any:
        budget = rb.active()
        if budget is not None:
            budget.iterate_free()
        value = super().getitem(obj, argument)
        if budget is not None and isinstance(value, str):
            budget.check_value(value)
        return value

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            rb.check_brace_format(value.__self__)
        return wrapped

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = rb.active()
        if budget is not None:
            budget.check_time()
            for arg in (*args, *kwargs.values()):
                budget.check_shallow(arg)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, (str, bytes)):
            args = _sized_string_method(__obj.__name__, owner, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if budget is not None:
            account(budget, result)
            if isinstance(owner, (list, dict, set)) and len(owner) > rb.MAX_ITEMS:
                raise rb.BudgetExceeded(f"a collection of over {rb.MAX_ITEMS} items")
        return result

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if isinstance(right, (int, float)) and abs(right) > 100:
                raise SecurityError("exponent too large")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() * abs(right) > 64_000:
                raise SecurityError("power builds a number over the size limit")
            return operator.pow(left, right)
        if operator_name == "*" and (isinstance(left, _SEQUENCES) or isinstance(right, _SEQUENCES)):
            seq, times = (left, right) if isinstance(left, _SEQUENCES) else (right, left)
            if isinstance(times, int) and times > 0:
                if len(seq) * times > MAX_PRODUCT_LENGTH:
                    raise SecurityError("repetition builds a value over the size limit")
                rb.expect(rb.size_of(seq) * times, "repetition")
        elif operator_name == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            rb.expect(rb.size_of(left) + rb.size_of(right), "+")
        elif operator_name == "%" and isinstance(left, str):
            rb.check_percent_format(left, right)
        result = self.binop_table[operator_name](left, right)
        budget = rb.active()
        if budget is not None:
            account(budget, result)
        return result


def _sized_string_method(name: str, owner: str | bytes, args: tuple[Any, ...], kwargs: dict[str, Any]
                         ) -> tuple[Any, ...]:
    """Methods of str that can build a huge string in one call are sized first."""
    if name in _WIDTH_METHODS and args:
        rb.small(args[0], f"a {name}() width")
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        rb.small(tab, "a tab size")
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        rb.expect(len(owner) + tabs * int(tab), "expandtabs")
    elif name == "join" and args:
        items = rb.bounded_list(args[0])
        rb.expect(len(owner) * max(len(items) - 1, 0) + sum(rb.size_of(i) for i in items), "join")
        return (items, *args[1:])
    elif name == "replace" and len(args) >= 2 and isinstance(owner, str):
        check_replace(owner, *args)
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        rb.expect(len(owner) * max(longest, 1), "translate")
    return args


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
    """The subject, HTML and text templates of one campaign, compiled once.

    Each render may take `budget_ms` of CPU (and as long in wall time) and produce at most
    `message_max_bytes` (subject + HTML + text); over that it raises TemplateProblem(code="TemplateBudget").
    """

    def __init__(self, subject: str, html: str, text: str | None, *, max_bytes: int,
                 budget_ms: float = DEFAULT_BUDGET_MS, message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES) -> None:
        for part, source in (("subject", subject), ("content_html", html), ("content_text", text)):
            if source is not None and len(source.encode("utf-8", "replace")) > max_bytes:
                raise TemplateProblem(f"template {part} is larger than the {max_bytes}-byte limit")
        self._seconds = budget_ms / 1000
        self._message_max_bytes = message_max_bytes
        self._subject = self._compile(TEXT_ENV, subject or "", "subject")
        self._html = self._compile(HTML_ENV, html or "", "content_html")
        self._text = self._compile(TEXT_ENV, text, "content_text") if text else None
        # A render with no contact data catches template-wide failures (includes, bad calls,
        # sandbox violations, budget overruns) before any mail goes out.
        try:
            self.render(Contact(email="preview@example.invalid"), unsubscribe_url="")
        except TemplateProblem as exc:
            if not exc.data_dependent:
                raise

    @staticmethod
    def _compile(env: CampaignSandbox, source: str, part: str) -> Template:
        """Any failure to compile, Jinja's or Python's (too deeply nested), is a TemplateProblem."""
        try:
            return env.from_string(source)
        except TemplateError as exc:
            lineno = getattr(exc, "lineno", None)
            line = f" line {lineno}" if lineno else ""
            raise TemplateProblem(f"template {part}{line} does not compile: {exc.message or exc}") from None
        except (RecursionError, MemoryError):
            raise TemplateProblem(f"template {part} nests too deeply to compile") from None
        except SyntaxError as exc:  # Python's compiler: "too many statically nested blocks" and the like
            raise TemplateProblem(f"template {part} nests too deeply to compile ({exc.msg})") from None
        except Exception as exc:
            raise TemplateProblem(f"template {part} does not compile: {type(exc).__name__}: {exc}") from None

    def render(self, contact: Contact, *, unsubscribe_url: str) -> RenderedMessage:
        context = {
            "email": contact.email,
            "first_name": contact.first_name or "",
            "last_name": contact.last_name or "",
            "country": contact.country or "",
            "attributes": dict(contact.attributes or {}),
            "unsubscribe_url": unsubscribe_url,
        }
        budget = rb.RenderBudget(seconds=self._seconds, max_chars=self._message_max_bytes)
        token = rb.activate(budget)
        try:
            subject = clean_subject(_render(self._subject, context, budget))
            html = _render(self._html, context, budget)
            text = _render(self._text, context, budget) if self._text else html_to_text(html)
        except rb.BudgetExceeded as exc:
            raise TemplateProblem(f"template exceeds its render budget: {exc}", code="TemplateBudget") from None
        except (RecursionError, MemoryError) as exc:
            raise TemplateProblem(f"template exceeds its render budget: {type(exc).__name__} (nesting too deep)",
                                  code="TemplateBudget") from None
        except Exception as exc:
            raise TemplateProblem(
                f"template does not render: {type(exc).__name__}: {exc}"[:1000],
                data_dependent=not isinstance(exc, _TEMPLATE_WIDE),
            ) from None
        finally:
            rb.deactivate(token)
        size = len(subject.encode("utf-8", "replace")) + len(html.encode("utf-8", "replace")) \
            + len(text.encode("utf-8", "replace"))
        if size > self._message_max_bytes:
            raise TemplateProblem(f"template exceeds its render budget: the message is {size} bytes, over the "
                                  f"{self._message_max_bytes}-byte limit", code="TemplateBudget")
        return RenderedMessage(subject=subject, html=html, text=text)


def _render(template: Template, context: dict[str, Any], budget: rb.RenderBudget) -> str:
    """The template's output. While it renders, every output and loop pass counts against the budget's
    work limit (a few times the message size); the message size itself is checked on the result."""
    text = template.render(context)
    budget.emitted(len(text))
    return text


# Linear-time passes: a tag never spans a '<', and an unclosed block/comment/link ends the search
# (the old lazy `.*?` patterns went quadratic: 200 KB of unclosed `<a href=x>` took 98 s).
