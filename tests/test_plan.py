"""Plans: Ansible `serial` batching, deterministic output, masked secrets, named problems."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runbook_exec.errors import RunbookError
from runbook_exec.inventory import Host
from runbook_exec.params import parse_extra_vars, resolve_params
from runbook_exec.plan import Plan, build_plan, resolve_batches
from runbook_exec.runbook import load_runbook

HOSTS = [
    Host(f"web{i}", ("web", "all"), {"ansible_host": f"10.0.0.{i}", "app_port": 8000 + i})
    for i in range(1, 7)
]


@pytest.mark.parametrize(
    ("count", "sizes", "expected"),
    [
        (6, [1, "50%", "100%"], [1, 3, 2]),
        (6, ["100%"], [6]),
        (6, [2], [2, 2, 2]),
        (7, [2], [2, 2, 2, 1]),
        (10, ["30%"], [3, 3, 3, 1]),
        (3, ["10%"], [1, 1, 1]),
        (5, [1, 2], [1, 2, 2]),
        (4, [10], [4]),
        (1, [1, "25%", "100%"], [1]),
    ],
)
def test_batches_split_like_ansible_serial(
    count: int, sizes: list[Any], expected: list[int]
) -> None:
    batches = resolve_batches(list(range(count)), sizes)
    assert [len(b) for b in batches] == expected
    assert [h for b in batches for h in b] == list(range(count))


RUNBOOK = """\
name: deploy
targets: web
params:
  version: {type: str, required: true}
  token:   {type: str, secret: true, env: RBX_PLAN_TOKEN}
strategy:
  batches: [1, "50%", "100%"]
  between_batches:
    - wait: 30s
    - approve: "Canary healthy?"
on_failure: rollback
steps:
  - name: Deploy {{ version }}
    shell: deploy --version {{ version | quote }} --token {{ token }}
  - name: Probe
    command: [curl, "http://{{ ansible_host }}:{{ app_port }}/"]
    register: probe
  - name: Only when probed
    shell: echo {{ probe.stdout | quote }}
    when: probe.rc == 0
  - name: Migrate
    shell: migrate
    run_once: true
  - name: Skip on web2
    shell: echo hi
    when: inventory_hostname != 'web2'
  - name: Gate
    approve: Continue with {{ version }}?
rollback:
  - name: Back
    release: {root: /srv/app, activate: previous}
"""


def make_plan(write: Callable[[str, str], Path], text: str = RUNBOOK, **values: str) -> Plan:
    runbook = load_runbook(write("deploy.yml", text), "deploy.yml")
    given = parse_extra_vars([f"{k}={v}" for k, v in values.items()])
    params = resolve_params(runbook, given, {"RBX_PLAN_TOKEN": "hunter2hunter2"})
    return build_plan(runbook, HOSTS, params, run={"id": "x", "operator": "ops"})


def test_plan_shows_batches_gates_and_failure_policy(write: Callable[[str, str], Path]) -> None:
    plan = make_plan(write, version="1.4.2")
    assert plan.batches == (("web1",), ("web2", "web3", "web4"), ("web5", "web6"))
    assert [(g.after_batch, g.wait, g.approve) for g in plan.gates] == [
        (1, 30.0, None),
        (1, None, "Canary healthy?"),
        (2, 30.0, None),
        (2, None, "Canary healthy?"),
    ]
    assert plan.on_failure == "rollback" and plan.rollback[0].kind == "release"


def test_same_inputs_give_the_same_plan(write: Callable[[str, str], Path]) -> None:
    first, second = make_plan(write, version="1"), make_plan(write, version="1")
    assert first.to_json() == second.to_json() and first.digest == second.digest
    assert make_plan(write, version="2").digest != first.digest


def test_steps_are_rendered_per_host_with_secrets_masked(write: Callable[[str, str], Path]) -> None:
    plan = make_plan(write, version="1.4.2")
    deploy, probe = plan.steps[0], plan.steps[1]
    assert deploy.name == "Deploy 1.4.2"
    assert deploy.actions[0].hosts == tuple(h.name for h in HOSTS)
    assert deploy.actions[0].action == {"shell": "deploy --version 1.4.2 --token ********"}
    assert "hunter2" not in plan.to_json()
    assert probe.actions[0].action == {"command": ["curl", "http://10.0.0.1:8001/"]}
    assert len(probe.actions) == 6


def test_registered_results_are_marked_as_known_at_run_time(
    write: Callable[[str, str], Path],
) -> None:
    step = make_plan(write, version="1").steps[2]
    (action,) = step.actions
    assert action.action == {"shell": "echo '<probe.stdout at run time>'"}
    assert "decided at run time" in action.note


def test_run_once_and_when_show_which_hosts_act(write: Callable[[str, str], Path]) -> None:
    plan = make_plan(write, version="1")
    migrate, skip, gate = plan.steps[3], plan.steps[4], plan.steps[5]
    assert migrate.actions[0].hosts == ("web1",) and migrate.actions[0].action == {
        "shell": "migrate"
    }
    assert (
        migrate.actions[1].action is None
        and migrate.actions[1].note == "run_once: runs on web1 only"
    )
    skipped = next(a for a in skip.actions if a.action is None)
    assert skipped.hosts == ("web2",) and "is false" in skipped.note
    assert gate.actions[0].action == {"approve": "Continue with 1?"}
    assert gate.actions[0].note == "once per batch"


def test_parameter_values_are_never_evaluated(write: Callable[[str, str], Path]) -> None:
    plan = make_plan(write, version="{{ 7 * 7 }}{% raw %}")
    assert plan.steps[0].actions[0].action == {
        "shell": "deploy --version '{{ 7 * 7 }}{% raw %}' --token ********"
    }


def test_undefined_names_name_the_step_field_line_and_hosts(
    write: Callable[[str, str], Path],
) -> None:
    text = RUNBOOK.replace("{{ app_port }}", "{{ app_prot }}").replace(
        "echo {{ probe.stdout | quote }}", "echo {{ later.stdout }}"
    )
    with pytest.raises(RunbookError) as caught:
        make_plan(write, text, version="1")
    found = [str(p) for p in caught.value.problems]
    assert (
        "deploy.yml:16: steps[1] (Probe).command[1]: 'app_prot' is undefined "
        "(on 6 of 6 hosts: web1, web2, web3, …)"
    ) in found
    assert any(
        p.startswith("deploy.yml:19: steps[2] (Only when probed).shell: 'later' is undefined")
        for p in found
    )


def test_values_are_validated_again_after_rendering(write: Callable[[str, str], Path]) -> None:
    text = RUNBOOK + "  - wait_for: {port: '{{ version }}'}\n"
    with pytest.raises(RunbookError) as caught:
        make_plan(write, text, version="abc")
    assert [str(p) for p in caught.value.problems] == [
        "deploy.yml:32: rollback[1].wait_for.port: after rendering: Input should be "
        "a valid integer, unable to parse string as an integer (on 6 of 6 hosts: web1, web2, "
        "web3, …)"
    ]


def test_inventory_variables_may_be_templates(write: Callable[[str, str], Path]) -> None:
    text = "name: t\ntargets: all\nsteps:\n  - shell: ls {{ app_root }}\n"
    runbook = load_runbook(write("t.yml", text), "t.yml")
    hosts = [Host("h1", ("all",), {"base": "/srv", "app_root": "{{ base }}/app"})]
    params = resolve_params(runbook, {}, {})
    plan = build_plan(runbook, hosts, params)
    assert plan.steps[0].actions[0].action == {"shell": "ls /srv/app"}
