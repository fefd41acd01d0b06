"""Resource bounds for sandboxed templates: loops, text sizes and big numbers.

jinja's sandbox stops attribute tricks but, as its documentation says, not resource exhaustion: a
nested loop, `'x' * 10**9`, a thirty-fold `~` doubling or a filter asked for a width of a billion all
run in the sandbox. A workflow comes from a pull request, so every rendering gets a budget:

- at most `MAX_ITERATIONS` loop iterations in all (`{% for %}` bodies are counted through a filter
  the code generator wraps around every loop's iterable),
- no string or list longer than `MAX_TEXT` produced by an operator, a filter, a method call or the
  output itself (checked before the allocation wherever the size can be known in advance),
- integers of at most `MAX_INT_BITS` bits from `*` and `**`.

A template over budget stops with `TemplateBudgetExceeded`, which the caller reports as a
validation error naming the limit.
"""

from __future__ import annotations

import contextvars
import operator
import re
from typing import Any

MAX_ITERATIONS = 1_000_000
MAX_TEXT = 1_000_000
MAX_INT_BITS = 100_000

# a width or precision of seven digits or more in a %-format or str.format spec
_HUGE_WIDTH = re.compile(r"[0-9]{7,}")


class TemplateBudgetExceeded(Exception):
    """A template asked for more work or memory than a workflow value may take."""


class _Budget:
    __slots__ = ("iterations",)

    def __init__(self) -> None:
        self.iterations = 0


_CURRENT: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("flowrun_template_budget", default=None)


def fresh_budget() -> contextvars.Token:
    return _CURRENT.set(_Budget())


def end_budget(token: contextvars.Token) -> None:
    _CURRENT.reset(token)


def _charge(n: int = 1) -> None:
    budget = _CURRENT.get()
    if budget is None:
        return
    budget.iterations += n
    if budget.iterations > MAX_ITERATIONS:
        raise TemplateBudgetExceeded(f"the template runs more than {MAX_ITERATIONS:,} loop iterations")


def bounded_loop(iterable: Any):
    """The filter wrapped around every `{% for %}` iterable: charges each iteration."""
    for item in iterable:
        _charge()
        yield item


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


def check_size(value: Any, what: str) -> Any:
    size = _size(value)
    if size is not None and size > MAX_TEXT:
        raise TemplateBudgetExceeded(f"{what} would be {size:,} long; a template value may be at most {MAX_TEXT:,}")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise TemplateBudgetExceeded(f"{what} gives an integer of more than {MAX_INT_BITS:,} bits")
    return value


def _check_width_args(args: tuple, kwargs: dict, what: str) -> None:
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_TEXT:
            raise TemplateBudgetExceeded(f"{what} was given {arg:,}; sizes may be at most {MAX_TEXT:,}")
        if isinstance(arg, str) and _HUGE_WIDTH.search(arg) and ("%" in arg or "{" in arg):
            raise TemplateBudgetExceeded(f"{what} was given a format with a width of a million or more")


def check_binop(op: str, left: Any, right: Any) -> None:
    """Refuse, before computing it, an operator result that would break the budget."""
    if op == "*":
        for seq, n in ((left, right), (right, left)):
            if _size(seq) is not None and isinstance(n, int) and _size(seq) * max(n, 0) > MAX_TEXT:
                raise TemplateBudgetExceeded(f"repeating a value {n:,} times exceeds {MAX_TEXT:,}")
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateBudgetExceeded(f"the product has more than {MAX_INT_BITS:,} bits")
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if left.bit_length() * right > MAX_INT_BITS:
                raise TemplateBudgetExceeded(f"the power has more than {MAX_INT_BITS:,} bits")
    elif op == "+":
        sizes = (_size(left), _size(right))
        if None not in sizes and sum(sizes) > MAX_TEXT:
            raise TemplateBudgetExceeded(f"joining the two values exceeds {MAX_TEXT:,}")
    elif op == "%" and isinstance(left, str) and _HUGE_WIDTH.search(left):
        raise TemplateBudgetExceeded("a %-format with a width of a million or more")


BINOPS = {"*": operator.mul, "**": operator.pow, "+": operator.add, "%": operator.mod}


def bounded_join(parts) -> str:
    """`~` concatenation, refusing before it builds a text over the budget."""
    texts = [str(p) for p in parts]
    check_size_total(texts, "the `~` concatenation")
    return "".join(texts)


def check_size_total(texts: list[str], what: str) -> None:
    total = sum(len(t) for t in texts)
    if total > MAX_TEXT:
        raise TemplateBudgetExceeded(f"{what} would be {total:,} long; a template value may be at most {MAX_TEXT:,}")


# filters and str methods whose arguments are widths or counts that size their result
_SIZING_FILTERS = frozenset({"center", "indent", "truncate", "wordwrap", "format", "batch", "slice"})
_SIZING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "format", "format_map"})


def bounded_filter(name: str, func):
    """Wrap a jinja filter: refuse huge size arguments first, oversized results after."""

    passes = hasattr(func, "jinja_pass_arg")  # context/environment first, then the value

    def wrapper(*args, **kwargs):
        values = args[1:] if passes else args
        if name in _SIZING_FILTERS:
            _check_width_args(values[1:], kwargs, f"the filter `{name}`")
        if name == "join" and values and isinstance(values[0], (list, tuple, range)):
            sep = values[1] if len(values) > 1 else kwargs.get("d", "")
            if isinstance(sep, str) and len(sep) * len(values[0]) > MAX_TEXT:
                raise TemplateBudgetExceeded(f"the filter `join` would exceed {MAX_TEXT:,}")
        if name == "replace" and len(values) > 2 and all(isinstance(a, str) for a in values[:3]):
            text, old, new = values[:3]
            grown = len(text) + text.count(old) * max(len(new) - len(old), 0) if old else len(text) * (len(new) + 1)
            if grown > MAX_TEXT:
                raise TemplateBudgetExceeded(f"the filter `replace` would make a text {grown:,} long")
        return check_size(func(*args, **kwargs), f"the filter `{name}`")

    if passes:  # jinja passes the context or environment first to filters marked so
        wrapper.jinja_pass_arg = func.jinja_pass_arg
    wrapper.__name__ = getattr(func, "__name__", name)
    return wrapper


def check_call_args(obj: Any, args: tuple, kwargs: dict) -> None:
    target = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format in its own safe formatter
    if isinstance(getattr(target, "__self__", None), str) and getattr(target, "__name__", "") in _SIZING_METHODS:
        _check_width_args((target.__self__, *args), kwargs, f"the method `{target.__name__}`")
