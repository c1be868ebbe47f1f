"""The render budget applied to Jinja2's filters: sizes checked before a filter can build a huge value
in one C call (join, replace, center, format widths, ...), and the result accounted after."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from jinja2 import pass_context
from jinja2.runtime import Context
from jinja2.utils import _PassArg

from sender.budget import (
    MAX_ITEMS,
    MAX_WIDTH,
    SHALLOW_FILTERS,
    SLOW_TEXT_FILTERS,
    SLOW_TEXT_INPUT,
    BudgetExceeded,
    RenderBudget,
    active,
    bounded_list,
    check_percent_format,
    deep_size,
    expect,
    size_of,
    small,
)

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
