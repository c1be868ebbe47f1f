"""The render budget: one message's render may only take so many loop iterations, bytes and CPU time.

Checked from inside the render (loop iterations, every call, filter, operator and output), never by a
timer around it, so a hostile template stops within the budget and the event loop stays responsive.
Operations that could build a huge value in one C call (join, replace, center, format widths, ...)
are sized before they run.
"""

from __future__ import annotations

import gc
import re
import string
import threading
import time
from contextvars import ContextVar
from itertools import islice
from typing import Any

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


class _GcClock:
    """CPU seconds the garbage collector spent, per thread: a collection that happens to run inside a
    render (a full one can take 100 ms with thousands of campaigns in memory) is not the template's."""

    def __init__(self) -> None:
        self._local = threading.local()
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, _info: dict[str, int]) -> None:
        local = self._local
        if phase == "start":
            local.started = time.thread_time()
        elif (started := getattr(local, "started", None)) is not None:
            local.spent = getattr(local, "spent", 0.0) + time.thread_time() - started
            local.started = None

    def spent(self) -> float:
        return float(getattr(self._local, "spent", 0.0))


GC_CLOCK = _GcClock()


class BudgetExceeded(Exception):
    """A render went over its budget; the message says which limit."""


class RenderBudget:
    """What one message's render may still spend. Time is wall time, but a render is only blamed for
    it when its own thread also used that much CPU outside garbage collection (a descheduled process,
    or a collection of the whole heap, is not the template's fault).
    """

    __slots__ = ("cpu_start", "deadline", "gc_start", "iterations", "lookups", "max_chars", "max_work", "output",
                 "seconds", "work")

    def __init__(self, *, seconds: float, max_chars: int) -> None:
        self.seconds = seconds
        self.max_chars = max_chars  # the rendered message, and any one string built on the way
        self.max_work = max_chars * WORK_FACTOR
        self.deadline = time.perf_counter() + seconds
        self.cpu_start = time.thread_time()
        self.gc_start = GC_CLOCK.spent()
        self.iterations = 0
        self.lookups = 0
        self.output = 0
        self.work = 0

    def check_time(self) -> None:
        if time.perf_counter() > self.deadline:
            used = time.thread_time() - self.cpu_start - (GC_CLOCK.spent() - self.gc_start)
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
