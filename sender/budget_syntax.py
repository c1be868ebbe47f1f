"""The render budget woven into a template's syntax tree: every loop pass, `{% set %}`/`{% with %}`
value, comparison operand and `~` concatenation goes through a budget check."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jinja2 import nodes, pass_context
from jinja2.runtime import Context, markup_join, str_join
from jinja2.visitor import NodeTransformer

from sender.budget import (
    active,
    expect,
    size_of,
)

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
