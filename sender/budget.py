"""The render budget: one message's render may only take so many loop iterations, bytes and CPU time.

Checked from inside the render (loop iterations, every call, filter, operator and output), never by a
timer around it, so a hostile template stops within the budget and the event loop stays responsive.
Operations that could build a huge value in one C call (join, replace, center, format widths, ...)
are sized before they run.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from functools import wraps
from itertools import islice
from typing import Any

from jinja2 import nodes, pass_context
from jinja2.runtime import Context, markup_join, str_join
from jinja2.utils import _PassArg
from jinja2.visitor import NodeTransformer

MAX_ITERATIONS = 25_000  # loop iterations per message, all loops together
MAX_ITEMS = 100_000  # elements in one list/dict/set, counted deeply where values get stringified
MAX_WIDTH = 10_000  # a format width or precision, an indent, a batch or slice count
SLOW_TEXT_INPUT = 20_000  # filters that work word by word in Python (urlize, wordwrap, ...) take this much
# filters that never turn their input into text (nor compare it): a cheap length check is enough
SHALLOW_FILTERS = frozenset({"list", "length", "count", "first", "last", "reverse", "batch", "slice", "map", "select",
                             "reject", "selectattr", "rejectattr", "items", "attr", "random", "sum", "default", "d",
                             "join"})
SLOW_TEXT_FILTERS = frozenset({"urlize", "wordwrap", "striptags", "title", "xmlattr", "pprint", "filesizeformat"})
WORK_FACTOR = 8  # all strings built during one render may add up to 8 x the message size


class BudgetExceeded(Exception):
    """A render went over its budget; the message says which limit."""


class RenderBudget:
    """What one message's render may still spend. Time is wall time, but a render is only blamed for
    it when its own thread also used that much CPU (a descheduled process is not the template's fault).
    """

    __slots__ = ("cpu_start", "deadline", "iterations", "lookups", "max_chars", "max_work", "output", "seconds",
                 "work")

    def __init__(self, *, seconds: float, max_chars: int) -> None:
        self.seconds = seconds
        self.max_chars = max_chars  # the rendered message, and any one string built on the way
        self.max_work = max_chars * WORK_FACTOR
        self.deadline = time.perf_counter() + seconds
        self.cpu_start = time.thread_time()
        self.iterations = 0
        self.lookups = 0
        self.output = 0
        self.work = 0

    def check_time(self) -> None:
        if time.perf_counter() > self.deadline:
            used = time.thread_time() - self.cpu_start
            if used > self.seconds:
                raise BudgetExceeded(f"rendering took over the {self.seconds * 1000:g} ms render budget")
            self.deadline = time.perf_counter() + (self.seconds - used)

    def iterate(self) -> None:
        self.iterations += 1
        if self.iterations > MAX_ITERATIONS:
            raise BudgetExceeded(f"more than {MAX_ITERATIONS} loop iterations")
        if not self.iterations & 15:
            self.check_time()

    def iterate_free(self) -> None:
        """An attribute or item lookup: not a loop pass, but a clock check now and then."""
        self.lookups += 1
        if not self.lookups & 63:
            self.check_time()

    def produced(self, chars: int) -> None:
        if chars > self.max_chars:
            raise BudgetExceeded(f"a value of over {self.max_chars} characters")
        self.work += chars
        if self.work > self.max_work:
            raise BudgetExceeded(f"built over {self.max_work} characters of text")

    def emitted(self, chars: int) -> None:
        self.check_time()
        self.output += chars
        if self.output > self.max_chars:
            raise BudgetExceeded(f"output over the {self.max_chars}-byte message limit")

    def check_shallow(self, value: Any) -> None:
        """A value passed along (an argument): bounded by its own length, cheaply."""
        if isinstance(value, str):
            if len(value) > self.max_chars:
                raise BudgetExceeded(f"a value of over {self.max_chars} characters")
        elif isinstance(value, (list, tuple, dict, set, frozenset)) and len(value) > MAX_ITEMS:
            raise BudgetExceeded(f"a collection of over {MAX_ITEMS} items")

    def check_value(self, value: Any) -> None:
        """A value about to be stored or stringified: bounded as a whole, nested lists included."""
        if isinstance(value, str):
            if len(value) > self.max_chars:
                raise BudgetExceeded(f"a value of over {self.max_chars} characters")
        elif isinstance(value, (list, tuple, dict, set, frozenset)):
            chars, items = deep_size(value, self.max_chars)
            if items > MAX_ITEMS:
                raise BudgetExceeded(f"a collection of over {MAX_ITEMS} items")
            if chars > self.max_chars:
                raise BudgetExceeded(f"a value of over {self.max_chars} characters")


_ACTIVE: ContextVar[RenderBudget | None] = ContextVar("sender_render_budget", default=None)


def active() -> RenderBudget | None:
    return _ACTIVE.get()


def activate(budget: RenderBudget | None) -> Any:
    return _ACTIVE.set(budget)


def deactivate(token: Any) -> None:
    _ACTIVE.reset(token)


_SCALARS = frozenset({int, float, bool, type(None)})


def deep_size(value: Any, max_chars: int) -> tuple[int, int]:
    """(characters, items) of a value as str() would spell it out, stopping once over a limit.
    Shared references count each time (`[s] * 1000` is 1000 copies of s once printed)."""
    chars = items = pops = 0
    stack = [value]
    budget = active()
    scalars = _SCALARS
    while stack:
        v = stack.pop()
        pops += 1
        if budget is not None and not pops & 255:
            budget.check_time()
        kind = type(v)
        if kind is str or isinstance(v, str):
            chars += len(v)
        elif isinstance(v, (list, tuple, set, frozenset, dict)):
            n = len(v)
            items += n
            chars += 4 * n
            if items > MAX_ITEMS or chars > max_chars:
                break
            for x in (v.items() if isinstance(v, dict) else v):
                t = type(x)
                if t is str:
                    chars += len(x)
                elif t not in scalars:
                    stack.append(x)
        else:
            chars += 8
        if items > MAX_ITEMS or chars > max_chars:
            break
    return chars, items


def size_of(value: Any) -> int:
    """Characters str(value) would take (strings exactly, collections walked, bounded)."""
    if isinstance(value, str):
        return len(value)
    budget = active()
    limit = budget.max_chars if budget else MAX_WIDTH * 100
    return deep_size(value, limit)[0] if isinstance(value, (list, tuple, dict, set, frozenset)) else 16


def bounded_list(value: Any) -> list[Any]:
    """Materialise an iterable, refusing one with more than MAX_ITEMS items."""
    if isinstance(value, (str, list, tuple, dict, set, frozenset, range)):
        if len(value) > MAX_ITEMS:
            raise BudgetExceeded(f"a collection of over {MAX_ITEMS} items")
        return list(value)
    budget = active()
    iterator = iter(value)
    items: list[Any] = []
    while chunk := list(islice(iterator, 1024)):  # lazy filters (map, select) run a chunk at a time
        items.extend(chunk)
        if len(items) > MAX_ITEMS:
            raise BudgetExceeded(f"a collection of over {MAX_ITEMS} items")
        if budget is not None:
            budget.check_time()
    return items


def expect(chars: int, what: str) -> None:
    """Refuse before building a string of `chars` characters that would go over the budget."""
    budget = active()
    limit = budget.max_chars if budget else MAX_WIDTH * 100
    if chars > limit:
        raise BudgetExceeded(f"{what} would build over {limit} characters")


def small(number: Any, what: str) -> None:
    if isinstance(number, int) and not isinstance(number, bool) and abs(number) > MAX_WIDTH:
        raise BudgetExceeded(f"{what} of {number} is over the limit of {MAX_WIDTH}")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def check_percent_format(fmt: str, args: Any) -> None:
    """`'%1000000000s' % x` and `'%*s' % (10**9, x)` build huge strings in one call."""
    stars = []
    for match in _PERCENT_SPEC.finditer(fmt):
        for part in match.groups():
            if part == "*":
                stars.append(part)
            elif part:
                small(int(part), "a format width")
    if stars:
        values = args if isinstance(args, tuple) else (args,)
        for value in values[: len(stars)]:
            small(value, "a format width")


def check_brace_format(fmt: str) -> None:
    """`'{:>1000000000}'.format(x)`: widths in str.format specs are bounded; nested specs refused."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format will raise its own clear error
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec:
            raise BudgetExceeded("nested format specifications are not allowed in templates")
        for digits in re.findall(r"\d+", spec):
            small(int(digits), "a format width")


# -- filters ----------------------------------------------------------------------------------------


def _join_size(items: list[Any], sep: str) -> int:
    budget = active()
    limit = budget.max_chars if budget else MAX_WIDTH * 100
    return len(sep) * max(len(items) - 1, 0) + deep_size(items, limit)[0] - 4 * len(items)


def _pre_join(env: Any, value: Any, d: str = "", attribute: Any = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    items = bounded_list(value)
    if attribute is not None:
        getter = _attribute_getter(env, attribute)
        items = [getter(item) for item in items]
    expect(_join_size(items, str(d)), "join")
    return (items, d), {}


def _attribute_getter(env: Any, attribute: Any) -> Callable[[Any], Any]:
    parts = [int(p) if p.isdigit() else p for p in attribute.split(".")] if isinstance(attribute, str) \
        else [attribute]

    def get(item: Any) -> Any:
        for part in parts:
            item = env.getitem(item, part)
        return item

    return get


def check_replace(s: Any, old: Any, new: Any, count: Any = None) -> None:
    text, old, new = str(s), str(old), str(new)
    hits = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    expect(len(text) + hits * max(len(new) - len(old), 0), "replace")


def _indent_size(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> None:
    del first, blank
    small(width, "an indent")
    text = str(s)
    indent = len(width) if isinstance(width, str) else int(width or 0)
    expect(len(text) + (text.count("\n") + 1) * indent, "indent")


def _wordwrap_size(s: Any, width: Any = 79, break_long_words: bool = True, wrapstring: Any = None,
                   break_on_hyphens: bool = True) -> None:
    del break_long_words, break_on_hyphens
    text = str(s)
    per_line = max(int(width) if isinstance(width, int) else 1, 1)
    lines = len(text) // per_line + text.count("\n") + 1
    if lines > 2_000:  # textwrap costs ~10 us a line
        raise BudgetExceeded(f"wordwrap would make {lines} lines (limit 2000)")
    expect(len(text) + lines * (len(str(wrapstring or "")) + 1), "wordwrap")


def _sum_start(iterable: Any, attribute: Any = None, start: Any = 0) -> None:
    del iterable, attribute
    if not isinstance(start, (int, float)):
        raise BudgetExceeded("sum() adds numbers only in campaign templates")


def _format_size(value: Any, *args: Any, **kwargs: Any) -> None:
    del kwargs
    check_percent_format(str(value), args)


def _tojson_indent(value: Any, indent: Any = None) -> None:
    del value
    if indent is not None:
        small(indent, "a JSON indent")
        if isinstance(indent, int) and indent > 16:
            raise BudgetExceeded("a JSON indent over 16")


# name -> (check taking the filter's own arguments) or a rewriter returning new (args, kwargs)
_CHECKS: dict[str, Callable[..., None]] = {
    "replace": check_replace,
    "center": lambda value, width=80: expect(int(width) if isinstance(width, int) else 0, "center"),
    "indent": _indent_size,
    "wordwrap": _wordwrap_size,
    "format": _format_size,
    "batch": lambda value, linecount, fill_with=None: small(linecount, "a batch size"),
    "slice": lambda value, slices, fill_with=None: small(slices, "a slice count"),
    "sum": _sum_start,
    "tojson": _tojson_indent,
    "truncate": lambda s, length=255, killwords=False, end="...", leeway=None: small(leeway, "a leeway"),
}


def budgeted_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """The filter, with the budget checked before (time, argument sizes) and after (result size).
    Marked pass_context, which also keeps Jinja from running it at compile time on constants."""
    pass_arg = _PassArg.from_obj(func)
    check = _CHECKS.get(name)

    @pass_context
    @wraps(func)
    def wrapper(context: Context, *args: Any, **kwargs: Any) -> Any:
        budget = active()
        if budget is not None:
            budget.check_time()
            if args:
                if name in SHALLOW_FILTERS:
                    budget.check_shallow(args[0])
                else:
                    budget.check_value(args[0])
        if name in SLOW_TEXT_FILTERS and args and size_of(args[0]) > SLOW_TEXT_INPUT:
            raise BudgetExceeded(f"{name} takes at most {SLOW_TEXT_INPUT} characters")
        if name == "join":
            args, kwargs = _pre_join(context.environment, *args, **kwargs)
        elif check is not None:
            check(*args, **kwargs)
        prefix: tuple[Any, ...] = ()
        if pass_arg is _PassArg.context:
            prefix = (context,)
        elif pass_arg is _PassArg.eval_context:
            prefix = (context.eval_ctx,)
        elif pass_arg is _PassArg.environment:
            prefix = (context.environment,)
        result = func(*prefix, *args, **kwargs)
        if budget is not None:
            account(budget, result)
        return result

    return wrapper


def account(budget: RenderBudget, result: Any) -> None:
    """A value just built: strings count towards the work budget, collections are bounded in length."""
    if isinstance(result, str):
        budget.produced(len(result))
    elif isinstance(result, (list, tuple, dict, set, frozenset)) and len(result) > MAX_ITEMS:
        raise BudgetExceeded(f"a collection of over {MAX_ITEMS} items")


# -- loops, assignments and concatenation, instrumented in the template's syntax tree -----------------

LOOP_FILTER = "_sender_loop"
VALUE_FILTER = "_sender_value"
CONCAT_FILTER = "_sender_concat"


@pass_context
def budget_loop(context: Context, iterable: Any, literal_chars: int = 0) -> Iterator[Any]:
    """Every `{% for %}` iterates through this: each pass counts, with the literal text in its body."""
    del context
    budget = active()
    if budget is None:
        yield from iterable
        return
    for item in iterable:
        budget.iterate()
        if literal_chars:
            budget.produced(literal_chars)
        yield item


@pass_context
def budget_value(context: Context, value: Any) -> Any:
    """`{% set %}` / `{% with %}` values are bounded, so doubling a value in a loop stops early."""
    del context
    budget = active()
    if budget is not None:
        budget.check_time()
        budget.check_value(value)
    return value


@pass_context
def budget_concat(context: Context, parts: list[Any]) -> str:
    """`a ~ b ~ c`, sized before it is joined."""
    expect(sum(size_of(p) for p in parts), "concatenation")
    budget = active()
    result = markup_join(parts) if context.eval_ctx.autoescape else str_join(parts)
    if budget is not None:
        budget.produced(len(result))
    return result


def _literal_chars(body: Iterable[nodes.Node]) -> int:
    """Literal text a loop body writes per pass (nested loops count their own)."""
    total = 0
    for node in body:
        if isinstance(node, nodes.TemplateData):
            total += len(node.data)
        elif isinstance(node, (nodes.For, nodes.Macro)):
            continue
        else:
            total += _literal_chars(node.iter_child_nodes())
    return total


class Instrument(NodeTransformer):
    """Rewrites a parsed template so loops, assignments and `~` go through the budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        literal = _literal_chars(node.body)
        node.iter = nodes.Filter(node.iter, LOOP_FILTER, [nodes.Const(literal)], [], None, None,
                                 lineno=node.lineno)
        return node

    def visit_Assign(self, node: nodes.Assign) -> nodes.Node:
        self.generic_visit(node)
        node.node = nodes.Filter(node.node, VALUE_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_With(self, node: nodes.With) -> nodes.Node:
        self.generic_visit(node)
        node.values = [nodes.Filter(v, VALUE_FILTER, [], [], None, None, lineno=node.lineno) for v in node.values]
        return node

    def visit_Compare(self, node: nodes.Compare) -> nodes.Node:
        """`==` and `in` on nested lists walk them in C: their operands are bounded first."""
        self.generic_visit(node)
        node.expr = nodes.Filter(node.expr, VALUE_FILTER, [], [], None, None, lineno=node.lineno)
        for operand in node.ops:
            operand.expr = nodes.Filter(operand.expr, VALUE_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(nodes.List(node.nodes, lineno=node.lineno), CONCAT_FILTER, [], [], None, None,
                            lineno=node.lineno)


INTERNAL_FILTERS: dict[str, Callable[..., Any]] = {
    LOOP_FILTER: budget_loop,
    VALUE_FILTER: budget_value,
    CONCAT_FILTER: budget_concat,
}
