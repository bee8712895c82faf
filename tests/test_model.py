"""Runbook validation: every class of mistake is one line naming file, line and field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from runbook_exec.errors import RunbookError
from runbook_exec.runbook import load_runbook
from runbook_exec.steps import CommandStep, ShellStep

GOOD = """\
name: deploy
targets: web
steps:
  - name: Hello
    shell: echo hello
"""


def problems_of(path: Path) -> list[str]:
    with pytest.raises(RunbookError) as caught:
        load_runbook(path, path.name)
    return [str(p) for p in caught.value.problems]


def test_good_runbook_loads_with_digest(write: Callable[[str, str], Path]) -> None:
    loaded = load_runbook(write("rb.yml", GOOD))
    assert loaded.runbook.name == "deploy"
    assert isinstance(loaded.runbook.steps[0], ShellStep)
    assert len(loaded.sha256) == 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            GOOD.replace("    shell:", "    shel:"),
            "rb.yml:5: steps[0] (Hello): unknown key 'shel'; did you mean 'shell'?",
            id="misspelled step kind",
        ),
        pytest.param(
            GOOD + "    timeot: 3s\n",
            "rb.yml:6: steps[0] (Hello).timeot: unknown key 'timeot'; did you mean 'timeout'?",
            id="unknown common field",
        ),
        pytest.param(
            GOOD + "colour: blue\n",
            "rb.yml:6: colour: unknown key 'colour'",
            id="unknown top-level key",
        ),
        pytest.param(
            GOOD.replace("targets: web\n", ""),
            "rb.yml:1: targets: required field 'targets' is missing",
            id="missing required field",
        ),
        pytest.param(
            GOOD + "    retries: many\n",
            "rb.yml:6: steps[0] (Hello).retries: Input should be a valid integer",
            id="wrong type",
        ),
        pytest.param(
            GOOD + "    command: [ls]\n",
            "rb.yml:4: steps[0] (Hello): a step does one thing, but this one has 2 kinds: "
            "shell, command",
            id="two kinds",
        ),
        pytest.param(
            GOOD.replace("    shell: echo hello\n", "    retries: 2\n"),
            "rb.yml:4: steps[0] (Hello): a step needs one kind: shell, command",
            id="no kind",
        ),
        pytest.param(
            GOOD + "  - command: ls -l\n",
            "rb.yml:6: steps[1].command: command takes an argv list",
            id="command given a string",
        ),
        pytest.param(
            GOOD + "strategy:\n  batches: [0]\n",
            "rb.yml:7: strategy.batches[0]: batch size 0 must be a count of at least 1",
            id="bad batch size",
        ),
        pytest.param(
            GOOD + "strategy:\n  batches: ['150%']\n",
            "rb.yml:7: strategy.batches[0]: batch size '150%' must be a count or a percentage",
            id="bad percentage",
        ),
        pytest.param(
            GOOD + "strategy:\n  between_batches:\n    - {wait: 3s, approve: ok}\n",
            "rb.yml:8: strategy.between_batches[0]: a gate is one of `wait: DURATION`",
            id="gate with two things",
        ),
        pytest.param(
            GOOD + "  - analysis: {prometheus: 'file:///etc/passwd', query: up, success: 'true'}\n",
            "rb.yml:6: steps[1].analysis.prometheus: Prometheus is asked over HTTP",
            id="analysis of a file",
        ),
        pytest.param(
            GOOD + "  - analysis: {prometheus: 'http://p:9090', query: up, count: 0}\n",
            "rb.yml:6: steps[1].analysis.count: an analysis takes from 1 to 10,000 measurements",
            id="analysis counted none",
        ),
        pytest.param(
            GOOD + "  - analysis: {prometheus: 'http://p:9090', query: up}\n",
            "rb.yml:6: steps[1].analysis: an analysis needs `success`, `failure` or both",
            id="analysis with no condition",
        ),
        pytest.param(
            GOOD + "    timeout: 3 minutes\n",
            "rb.yml:6: steps[0] (Hello).timeout: '3 minutes' is not a duration",
            id="bad duration",
        ),
        pytest.param(
            GOOD + "    delay: 5\n",
            "rb.yml:6: steps[0] (Hello).delay: 5 has no unit; write 5s, 5m or 5ms",
            id="duration without a unit",
        ),
        pytest.param(
            GOOD + "on_failure: rollback\n",
            "rb.yml:6: on_failure: is 'rollback' but the runbook has no `rollback` steps",
            id="rollback without steps",
        ),
        pytest.param(
            GOOD + "on_failure: retry\n",
            "rb.yml:6: on_failure: Input should be 'stop', 'continue' or 'rollback'",
            id="bad choice",
        ),
        pytest.param(
            GOOD + "params:\n  v: {type: text}\n",
            "rb.yml:7: params.v.type: Input should be 'str', 'int'",
            id="bad parameter type",
        ),
        pytest.param(
            GOOD + "params:\n  v: {pattern: '[a-'}\n",
            "rb.yml:7: params.v: pattern is not a valid regular expression",
            id="bad parameter pattern",
        ),
        pytest.param(
            GOOD + "params:\n  v: {required: true, default: x}\n",
            "rb.yml:7: params.v: a required parameter cannot have a default",
            id="required with default",
        ),
        pytest.param(
            GOOD + "  - http: {url: x, statuss: 200}\n",
            "rb.yml:6: steps[1].http.statuss: unknown key 'statuss'; did you mean 'status'?",
            id="unknown nested key",
        ),
        pytest.param(
            GOOD + "  - wait_for: {port: 80, command: 'true'}\n",
            "rb.yml:6: steps[1].wait_for: wait_for takes either `port` or `command`",
            id="wait_for with both",
        ),
        pytest.param(
            GOOD + "  - upload: {src: a, dest: b, mode: 'rwx'}\n",
            "rb.yml:6: steps[1].upload.mode: String should match pattern",
            id="bad file mode",
        ),
        pytest.param(
            GOOD + "  - shell: x\n    register: 'not valid'\n",
            "rb.yml:7: steps[1].register: String should match pattern",
            id="bad register name",
        ),
        pytest.param(
            "name: a\ntargets: web\nsteps: []\n",
            "rb.yml:3: steps: List should have at least 1 item",
            id="no steps",
        ),
        pytest.param(
            "- just\n- a list\n",
            "rb.yml:1: a runbook is a mapping",
            id="not a mapping",
        ),
        pytest.param(
            GOOD + "name: again\n",
            "rb.yml:6: duplicate key 'name' (first at line 1)",
            id="duplicate key",
        ),
        pytest.param(
            GOOD + "  - shell: [unclosed\n",
            "rb.yml:7: YAML syntax:",
            id="yaml syntax error",
        ),
        pytest.param("", "rb.yml: is empty", id="empty file"),
    ],
)
def test_each_mistake_is_named_with_file_line_and_field(
    write: Callable[[str, str], Path], text: str, expected: str
) -> None:
    found = problems_of(write("rb.yml", text))
    assert any(p.startswith(expected) for p in found), found
    assert all("\n" not in p for p in found)


def test_all_problems_are_reported_not_only_the_first(write: Callable[[str, str], Path]) -> None:
    text = GOOD + "    timeot: 3s\n  - shel: x\nstrategy:\n  batches: [0]\n"
    found = problems_of(write("rb.yml", text))
    assert len(found) == 3, found
    # Template syntax too, in the same pass as wrong fields (not only on the next try).
    text = text.replace("strategy:", "  - shell: 'echo {{ broken'\nstrategy:")
    found = problems_of(write("rb.yml", text))
    assert len(found) == 4, found
    assert any(p.startswith("rb.yml:8: steps[2].shell: template syntax") for p in found), found


def test_anchors_aliases_and_merge_keys_work(write: Callable[[str, str], Path]) -> None:
    text = """\
name: anchors
targets: web
steps:
  - &slow
    name: One
    shell: one
    timeout: 5m
    retries: 2
  - <<: *slow
    name: Two
    retries: 0
  - *slow
"""
    loaded = load_runbook(write("rb.yml", text))
    one, two, three = loaded.runbook.steps
    assert one.timeout == 300 and one.retries == 2
    assert two.name == "Two" and two.retries == 0 and two.timeout == 300
    assert isinstance(two, ShellStep) and two.shell == "one"
    assert three == one


def test_merge_key_override_is_not_a_duplicate(write: Callable[[str, str], Path]) -> None:
    text = GOOD + "rollback:\n  - &r {name: R, command: [a]}\n  - {<<: *r, name: S}\n"
    loaded = load_runbook(write("rb.yml", text))
    assert isinstance(loaded.runbook.rollback[1], CommandStep)
    assert loaded.runbook.rollback[1].name == "S"


def test_alias_bomb_is_refused_quickly(write: Callable[[str, str], Path]) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 10):
        refs = ",".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    found = problems_of(write("bomb.yml", "\n".join(lines) + "\n"))
    assert "through aliases; refused" in found[0]


def test_oversized_runbook_is_refused_before_parsing(write: Callable[[str, str], Path]) -> None:
    found = problems_of(write("big.yml", "# " + "x" * (1024 * 1024) + "\n"))
    assert "the limit is 1048576 bytes" in found[0]


def test_unsafe_yaml_tags_are_refused(write: Callable[[str, str], Path]) -> None:
    text = GOOD + "description: !!python/object/apply:os.system ['touch /tmp/rbx-pwned']\n"
    found = problems_of(write("rb.yml", text))
    assert "YAML syntax" in found[0] and "python/object" in found[0]
    assert not Path("/tmp/rbx-pwned").exists()


def test_every_step_kind_is_known(write: Callable[[str, str], Path]) -> None:
    text = """\
name: kinds
targets: all
steps:
  - shell: echo
  - command: [echo, hi]
  - script: scripts/x.sh
  - script: {src: scripts/x.sh, args: [-v]}
  - upload: {src: a.tgz, dest: /tmp/a.tgz, mode: '0644'}
  - template: {src: t.j2, dest: /etc/t}
  - playbook: playbooks/p.yml
    vars: {a: 1}
    tags: [x]
    check: true
  - module: {name: ansible.builtin.ping}
  - http: {url: "http://{{ ansible_host }}/", status: [200, 204], contains: ok}
  - wait_for: {port: "{{ app_port }}", timeout: 10s}
  - wait_for: {command: test -f /tmp/x}
  - local: make dist
  - local: [make, dist]
  - release: {root: /srv/app, activate: "1.0", keep: 3}
  - approve: Go on?
  - wait: 1m30s
    creates: /tmp/x
    unless: test -f /tmp/y
    run_once: true
    ignore_errors: true
"""
    loaded = load_runbook(write("rb.yml", text))
    kinds = [step.kind for step in loaded.runbook.steps]
    assert set(kinds) == {
        "shell",
        "command",
        "script",
        "upload",
        "template",
        "playbook",
        "module",
        "http",
        "wait_for",
        "local",
        "release",
        "approve",
        "wait",
    }
    assert loaded.runbook.steps[-1].wait == 90  # type: ignore[union-attr]


def test_a_when_written_as_a_template_is_read_as_its_expression_with_a_warning(
    write: Callable[[str, str], Path],
) -> None:
    from runbook_exec.checks import braced_whens

    text = GOOD + '    when: "{{ go }}"\n  - shell: echo b\n    when: "{{ a }} and {{ b }}"\n'
    loaded = load_runbook(write("rb.yml", text), "rb.yml")
    assert [s.when for s in loaded.runbook.steps] == ["go", "{{ a }} and {{ b }}"]
    warned = [str(w) for w in braced_whens(loaded)]
    assert len(warned) == 1 and warned[0].startswith("rb.yml:6: steps[0] (Hello).when:")
    assert "is read as 'go'" in warned[0]
