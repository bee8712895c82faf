"""The step-kind registry and the `assert:` kind, which was added as one new module and one
registry entry: what the registry refuses, and `assert:` on real sshd hosts."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from runbook_exec.steps import KINDS, STEP_CLASSES, Scope, StepBase, _registered
from runbook_exec.testing.lab import SshLab

Run = Callable[..., subprocess.CompletedProcess[str]]
Write = Callable[[str, str], Path]

HEADER = "name: t\ntargets: app\nstrategy: {batches: [2], max_fail_percentage: 100}\nsteps:\n"


def test_every_kind_runs_or_is_run_for_it() -> None:
    for cls in KINDS:
        if cls.scope is Scope.HOST:
            assert cls.run is not StepBase.run, cls
        if cls.scope is Scope.HOSTS:
            assert cls.ansible_call is not StepBase.ansible_call, cls
    assert "assert" in STEP_CLASSES


def test_the_registry_refuses_a_kind_that_could_not_run() -> None:
    class Lazy(StepBase):
        kind = "lazy"
        lazy: str

    with pytest.raises(TypeError, match="runs on hosts but defines no run"):
        _registered((*KINDS, Lazy))

    class Misnamed(StepBase):
        kind = "misnamed"
        other: str

    with pytest.raises(TypeError, match="has no field 'misnamed'"):
        _registered((Misnamed,))
    with pytest.raises(TypeError, match="two step kinds"):
        _registered((*KINDS, KINDS[0]))


def test_assert_fails_the_hosts_where_a_condition_is_false(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    body = """\
  - name: Read
    shell: "echo {{ 'ok' if inventory_hostname != 'host3' else 'broken' }}"
    register: health
  - name: Healthy
    assert:
      that: ["health.rc == 0", "health.stdout == 'ok'"]
      message: the release did not come up healthy
  - name: After
    shell: touch {{ lab_root | quote }}/after
"""
    done = runbook_exec("run", write("rb.yml", HEADER + body), "--json")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["hosts"]["host3"] == "failed"
    assert (hosts.host("host1").root / "after").exists()
    assert not (hosts.host("host3").root / "after").exists()
    record = json.loads(runbook_exec("show", json.loads(done.stdout)["run_id"], "--json").stdout)
    healthy = {s["host"]: s for s in record["host_steps"] if s["step_name"] == "Healthy"}
    assert healthy["host1"]["status"] == "ok"
    assert healthy["host1"]["stdout"] == "2 conditions held"
    assert healthy["host3"]["status"] == "failed"
    assert (
        "the release did not come up healthy (false: health.stdout == 'ok')"
        in (healthy["host3"]["message"])
    )


def test_assert_shorthand_and_its_plan_line(runbook_exec: Run, write: Write, hosts: SshLab) -> None:
    path = write("rb.yml", HEADER + "  - assert: app_port | int > 1024\n")
    done = runbook_exec("plan", path, "-i", hosts.inventory)
    assert done.returncode == 0, done.stderr
    assert "assert app_port | int > 1024" in done.stdout


def test_a_broken_assert_expression_fails_check_and_run_before_any_host(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    path = write("rb.yml", HEADER + "  - shell: touch {{ lab_root }}/x\n  - assert: 'a ==== b'\n")
    for command, args in (("check", ("-i", hosts.inventory)), ("run", ())):
        done = runbook_exec(command, path, *args)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "steps[1].assert.that[0]" in done.stderr, done.stderr
        assert "rb.yml:6:" in done.stderr, done.stderr
    assert not any((hosts.host(h).root / "x").exists() for h in ("host1", "host2"))
