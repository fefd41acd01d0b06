"""Sandboxed jinja rendering of literal values, keeping native types (`"{{ seed }}"` stays an int)."""

from __future__ import annotations

from typing import Any

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
    parts = list(values)
    if not parts:
        return ""
    if len(parts) == 1:
        from jinja2 import Undefined

        if isinstance(parts[0], Undefined):
            str(parts[0])  # StrictUndefined raises its UndefinedError here, naming the missing variable
        return parts[0]
    return "".join(str(p) for p in parts)


def _environment():
    global _ENV
    if _ENV is None:
        from jinja2 import StrictUndefined
        from jinja2.environment import Template
        from jinja2.nativetypes import NativeCodeGenerator
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        class NativeSandbox(ImmutableSandboxedEnvironment):
            code_generator_class = NativeCodeGenerator
            concat = staticmethod(_concat)

        class NativeSandboxTemplate(Template):
            environment_class = NativeSandbox

            def render(self, *args, **kwargs):
                ctx = self.new_context(dict(*args, **kwargs))
                try:
                    return self.environment_class.concat(self.root_render_func(ctx))
                except Exception:
                    return self.environment.handle_exception()

        NativeSandbox.template_class = NativeSandboxTemplate
        _ENV = NativeSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    return _ENV


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

    env = _environment()
    try:
        template = env.from_string(value)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}") from None
    try:
        return template.render(context)
    except UndefinedError as exc:
        names = ", ".join(sorted(context)) or "none"
        raise TemplateProblem(f"{exc.message} (names available: {names})") from None
    except SecurityError as exc:
        raise TemplateProblem(f"refused by the template sandbox: {exc}") from None
    except TemplateError as exc:
        raise TemplateProblem(f"template error: {exc.message or exc}") from None
    except (ArithmeticError, TypeError, ValueError, AttributeError, LookupError, OverflowError) as exc:
        raise TemplateProblem(f"template failed: {type(exc).__name__}: {exc}") from None


def referenced_names(value: Any) -> set[str]:
    """Names that templates inside `value` read (for 'a swept name that nothing uses')."""
    if isinstance(value, dict):
        return set().union(*(referenced_names(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(referenced_names(v) for v in value)) if value else set()
    if not is_template(value):
        return set()
    from jinja2 import meta
    from jinja2.exceptions import TemplateSyntaxError

    try:
        return set(meta.find_undeclared_variables(_environment().parse(value)))
    except TemplateSyntaxError:
        return set()
