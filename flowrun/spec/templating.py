"""Sandboxed jinja rendering of literal values, keeping native types (`"{{ seed }}"` stays an int)."""

from __future__ import annotations

import functools

from typing import Any

from flowrun.spec.template_bounds import MAX_TEXT, TemplateBudgetExceeded, check_size, end_budget, fresh_budget

TEMPLATE_MARKERS = ("{{", "{%")


def is_template(value: Any) -> bool:
    return isinstance(value, str) and any(m in value for m in TEMPLATE_MARKERS)


def has_templates(value: Any) -> bool:
    if isinstance(value, dict):
        return any(has_templates(v) for v in value.values())
    if isinstance(value, list):
        return any(has_templates(v) for v in value)
    return is_template(value)


class TemplateProblem(Exception):
    """A template that does not parse or does not render; the message is for the user."""


_ENV = None


def _concat(values):
    # jinja's own native_concat runs ast.literal_eval on string results, which would turn a prompt
    # param "42" or "[1, 2]" into a number or a list. We keep a lone expression's native value and
    # join anything else as text.
    from flowrun.spec.template_bounds import check_size_total

    parts = []
    total = 0
    for part in values:  # the template yields its output piece by piece: stop once it grows too long
        parts.append(part)
        total += len(part) if isinstance(part, str) else 1
        if total > MAX_TEXT:
            check_size_total([str(p) for p in parts], "the template's output")
    if not parts:
        return ""
    if len(parts) == 1:
        from jinja2 import Undefined

        if isinstance(parts[0], Undefined):
            str(parts[0])  # StrictUndefined raises its UndefinedError here, naming the missing variable
        return check_size(parts[0], "the template's value")
    return "".join(str(p) for p in parts)


def _environment():
    global _ENV
    if _ENV is None:
        from jinja2 import StrictUndefined, nodes
        from jinja2.environment import Template
        from jinja2.nativetypes import NativeCodeGenerator
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        from flowrun.spec import template_bounds as bounds

        class BoundedCodeGenerator(NativeCodeGenerator):
            # every loop's iterable goes through the counting filter; `~` through a bounded join
            def visit_Template(self, node, frame=None):
                from jinja2.exceptions import TemplateSyntaxError

                for kind in (nodes.Import, nodes.FromImport, nodes.Include, nodes.Extends):
                    for found in node.find_all(kind):
                        raise TemplateSyntaxError("templates may not import, include or extend other files", found.lineno)
                for loop in node.find_all(nodes.For):
                    loop.iter = nodes.Filter(loop.iter, "flowrun_loop", [], [], None, None, lineno=loop.lineno)
                super().visit_Template(node, frame)

            def visit_Concat(self, node, frame):
                self.write("environment.bounded_join((")
                for arg in node.nodes:
                    self.visit(arg, frame)
                    self.write(", ")
                self.write("))")

        class NativeSandbox(ImmutableSandboxedEnvironment):
            code_generator_class = BoundedCodeGenerator
            concat = staticmethod(_concat)
            intercepted_binops = frozenset(bounds.BINOPS)
            bounded_join = staticmethod(bounds.bounded_join)

            def call_binop(self, context, op, left, right):
                bounds.check_binop(op, left, right)
                return bounds.check_size(self.binop_table[op](left, right), f"the `{op}` operator")

            def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
                bounds.check_call_args(__obj, args, kwargs)
                result = super().call(__context, __obj, *args, **kwargs)
                return bounds.check_size(result, f"`{getattr(__obj, '__name__', 'the call')}`")

        class NativeSandboxTemplate(Template):
            environment_class = NativeSandbox

            def render(self, *args, **kwargs):
                ctx = self.new_context(dict(*args, **kwargs))
                try:
                    return self.environment_class.concat(self.root_render_func(ctx))
                except Exception:
                    return self.environment.handle_exception()

        NativeSandbox.template_class = NativeSandboxTemplate
        env = NativeSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        env.filters = {name: bounds.bounded_filter(name, f) for name, f in env.filters.items()}
        env.filters["flowrun_loop"] = bounds.bounded_loop
        _ENV = env
    return _ENV


@functools.lru_cache(maxsize=4096)
def _compiled(text: str):
    """A template compiled once per process: every cell of a sweep renders the same text (compiling is
    most of the cost of `flowrun validate`)."""
    return _environment().from_string(text)


def render_value(value: Any, context: dict[str, Any]) -> Any:
    """Render every template string inside `value` (recursing into lists and mappings)."""
    if isinstance(value, dict):
        return {k: render_value(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    if not is_template(value):
        return value
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError

    try:
        template = _compiled(value)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}") from None
    token = fresh_budget()
    try:
        return template.render(context)
    except TemplateBudgetExceeded as exc:
        raise TemplateProblem(f"template stopped: {exc}") from None
    except RecursionError:
        raise TemplateProblem("template stopped: it recurses too deeply") from None
    except MemoryError:
        raise TemplateProblem("template stopped: it ran out of memory") from None
    except UndefinedError as exc:
        names = ", ".join(sorted(context)) or "none"
        raise TemplateProblem(f"{exc.message} (names available: {names})") from None
    except SecurityError as exc:
        raise TemplateProblem(f"refused by the template sandbox: {exc}") from None
    except TemplateError as exc:
        raise TemplateProblem(f"template error: {exc.message or exc}") from None
    except (ArithmeticError, TypeError, ValueError, AttributeError, LookupError, OverflowError) as exc:
        raise TemplateProblem(f"template failed: {type(exc).__name__}: {exc}") from None
    finally:
        end_budget(token)


def referenced_names(value: Any) -> set[str]:
    """Names that templates inside `value` read (for 'a swept name that nothing uses')."""
    if isinstance(value, dict):
        return set().union(*(referenced_names(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(referenced_names(v) for v in value)) if value else set()
    if not is_template(value):
        return set()
    from jinja2.exceptions import TemplateSyntaxError

    try:
        return set(_names_read(value))
    except TemplateSyntaxError:
        return set()


@functools.lru_cache(maxsize=4096)
def _names_read(text: str) -> frozenset[str]:
    from jinja2 import meta

    return frozenset(meta.find_undeclared_variables(_environment().parse(text)))
