"""Templates: sandboxed, strict, and parameter values are data, never evaluated."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from runbook_exec.templating import (
    HostVars,
    TemplateProblem,
    evaluate,
    names_used,
    quote,
    render,
)

NASTY = (
    "a'b\"c $(touch /tmp/rbx-pwned) `id` ; rm -rf / && echo {{ 7*7 }} {% if 1 %}x{% endif %}\n\\"
)


def test_values_holding_template_syntax_come_out_byte_for_byte() -> None:
    assert render("{{ v }}", {"v": NASTY}) == NASTY
    assert render("echo {{ v | quote }}", {"v": "{{ 7 * 7 }}"}) == "echo '{{ 7 * 7 }}'"


def test_quote_makes_one_shell_word_that_reaches_the_command_unchanged() -> None:
    script = render("printf %s {{ v | quote }}", {"v": NASTY})
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout == NASTY
    assert shlex.split(quote(NASTY)) == [NASTY]


def test_quote_spells_non_strings_plainly() -> None:
    assert quote(True) == "true" and quote(8080) == "8080"


def test_undefined_names_are_errors_not_empty_strings() -> None:
    with pytest.raises(TemplateProblem, match="'app_port' is undefined"):
        render("port {{ app_port }}", {})


def test_sandbox_refuses_reaching_into_python_internals() -> None:
    with pytest.raises(TemplateProblem):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})


def test_syntax_errors_are_template_problems() -> None:
    with pytest.raises(TemplateProblem, match="template syntax"):
        render("{{ unclosed", {})


def test_when_expressions_evaluate_to_values() -> None:
    assert evaluate("version != '0' and count > 2", {"version": "1", "count": 3}) is True
    assert names_used("result.rc == 0 and x", expression=True) == {"result", "x"}


def test_plain_text_is_not_touched() -> None:
    assert render("100% {not a template}", {}) == "100% {not a template}"


def test_inventory_values_that_are_templates_render_lazily_but_data_does_not() -> None:
    names = HostVars(
        {"base": "/srv", "app_root": "{{ base }}/{{ app }}", "broken": "{{ nowhere }}"},
        {"app": "{{ 7 * 7 }}"},
    )
    assert render("{{ app_root }}", names) == "/srv/{{ 7 * 7 }}"
    with pytest.raises(TemplateProblem, match="in inventory variable 'broken'"):
        render("{{ broken }}", names)


def test_inventory_variables_referring_to_each_other_in_a_loop_are_caught() -> None:
    names = HostVars({"a": "{{ b }}", "b": "{{ a }}"}, {})
    with pytest.raises(TemplateProblem, match="refers to itself"):
        render("{{ a }}", names)


def test_expressions_see_jinja_globals_and_lazy_names() -> None:
    names = HostVars({"n": "{{ 2 + 1 }}"}, {})
    assert evaluate("n | int in range(5)", names) is True
