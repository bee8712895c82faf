"""Bad input never crashes or hangs: each case below exits 2 with where and why, and no
traceback, before anything connects. (How long each takes and how much memory it uses is
measured by bench/bad_input.py, not asserted here.)"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

Cli = Callable[..., subprocess.CompletedProcess[str]]

STEP = "name: t\ntargets: all\nsteps:\n  - shell: {body}\n"


def refused(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("\"{{ 'x' * 1000000000 }}\"", "refused"),
        ('"{{ range(100000000) | list }}"', "refused"),
        ("\"{{ 'x' | center(1000000000) }}\"", "center width"),
        ("\"{{ '%1000000000s' % 'x' }}\"", "format width"),
    ],
)
def test_a_template_that_would_take_gigabytes_is_refused(
    cli: Cli, tmp_path: Path, body: str, expected: str
) -> None:
    runbook = tmp_path / "rb.yml"
    runbook.write_text(STEP.format(body=body))
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("h1\n")
    refused(cli("check", runbook, "-i", inventory), "steps[0].shell", expected)


def test_a_nul_byte_deep_nesting_and_files_that_are_not_files(cli: Cli, tmp_path: Path) -> None:
    nul = tmp_path / "nul.yml"
    nul.write_bytes(b"name: t\ntargets: all\nsteps:\n  - shell: a\x00b\n")
    refused(cli("check", nul), "nul.yml:4", "NUL byte")
    deep = tmp_path / "deep.yml"
    deep.write_text("name: t\ntargets: all\nsteps: " + "[" * 20000 + "]" * 20000 + "\n")
    refused(cli("check", deep), "nested more than")
    refused(cli("check", "/dev/zero"), "not a regular file")
    fifo = tmp_path / "fifo.yml"
    os.mkfifo(fifo)
    refused(cli("check", fifo), "not a regular file")  # returns: never opened for reading
    refused(cli("check", tmp_path), "not a regular file")
    good = tmp_path / "good.yml"
    good.write_text("name: t\nparams: {v: {}}\ntargets: all\nsteps:\n  - shell: echo {{ v }}\n")
    refused(cli("check", good, "-e", f"@{nul}"), "NUL byte")


def test_audit_verify_of_a_file_that_is_no_export(cli: Cli, tmp_path: Path) -> None:
    binary = tmp_path / "export.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    db = f"sqlite:///{tmp_path / 'state.db'}"
    refused(cli("audit", "verify", "--file", binary, "--db", db), "not UTF-8")
    refused(cli("audit", "verify", "--file", "/dev/zero", "--db", db), "not a regular file")


def test_a_bug_of_ours_is_one_line_and_a_debug_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runbook_exec.cli import main
    from runbook_exec.service import Service

    def broken(self: Service, limit: int = 20) -> list[object]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Service, "runs", broken)
    monkeypatch.setenv("RUNBOOK_EXEC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as ended:
        main(["runs", "--db", f"sqlite:///{tmp_path / 'state.db'}"])
    assert ended.value.code == 70
    said = capsys.readouterr().err
    assert "internal error (RuntimeError: a bug)" in said and "Traceback" not in said
    logs = list((tmp_path / "cache" / "errors").iterdir())
    assert len(logs) == 1 and str(logs[0]) in said.replace("\n", "")
    assert "Traceback" in logs[0].read_text() and oct(logs[0].stat().st_mode)[-3:] == "600"


def test_nul_bytes_in_values_and_short_secrets_are_bad_input(cli: Cli, tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("h1\n")
    runbook = tmp_path / "rb.yml"
    runbook.write_text(
        "name: t\ntargets: all\nparams:\n  msg: {}\n  token: {secret: true, env: RBX_TOK}\n"
        "steps:\n  - shell: echo {{ msg | quote }}\n  - shell: \"printf 'a\\0b'\"\n"
    )
    values = tmp_path / "values.yml"
    values.write_text('msg: "hello\\0world"\n')
    done = cli("check", runbook, "-i", inventory, "-e", f"@{values}", env={"RBX_TOK": "e"})
    refused(done, "params.msg", "NUL byte", "params.token", "shorter than 4 characters")
    assert "********" not in done.stderr
    done = cli("check", runbook, "-i", inventory, "-e", "msg=hi", env={"RBX_TOK": "long-enough"})
    refused(done, "steps[1].shell", "holds a NUL byte")


def test_inventories_keys_and_checkpoints_that_are_not_files(cli: Cli, tmp_path: Path) -> None:
    runbook = tmp_path / "rb.yml"
    runbook.write_text(STEP.format(body="echo hi"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    db = f"sqlite:///{tmp_path / 'state.db'}"
    for source in ("/dev/zero", str(fifo)):
        refused(cli("check", runbook, "-i", source), "not a regular file or a folder")
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("h1 ansible_host=127.0.0.1\n")
    done = cli("run", runbook, "-i", inventory, "--known-hosts", fifo, "--db", db)
    refused(done, "--known-hosts", "not a regular file")
    refused(cli("audit", "verify", "--checkpoint", "/dev/zero", "--db", db), "not a")
    keyed = cli("runs", "--db", db, env={"RUNBOOK_EXEC_AUDIT_KEY_FILE": "/dev/zero"})
    assert keyed.returncode in (0, 2) and "Traceback" not in keyed.stderr


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x'.ljust(1000000000) }}",
        "{{ '{0:>{1}}'.format('x', 1000000000) }}",
        "{{ '%*d' % (1000000000, 1) }}",
        "{{ ('x' * 1000) | replace('x', 'y' * 10000000) }}",
        "{{ range(100000) | join('y' * 1000000) }}",
        "{{ (9 ** 10000) ** 10000 }}",
        "{{ lipsum(100000) }}",
    ],
)
def test_other_ways_to_a_huge_text_are_refused_too(template: str) -> None:
    from runbook_exec.templating import TemplateProblem, render

    with pytest.raises(TemplateProblem):
        render(template, {})


def test_options_and_fields_that_make_no_sense_are_refused_before_anything(
    cli: Cli, tmp_path: Path
) -> None:
    runbook = tmp_path / "rb.yml"
    runbook.write_text(STEP.format(body='"true"'))
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("h1 ansible_host=127.0.0.1 ansible_port=1\n")
    base = ("run", runbook, "-i", inventory, "--dry-run")
    refused(cli(*base, "--timeout", "0"), "--timeout", "more than 0s")
    refused(cli(*base, "--timeout", "nan"), "--timeout", "not a duration")
    refused(cli(*base, "--connect-timeout", "inf"), "--connect-timeout", "not a duration")
    refused(cli(*base, "--output-limit", "-1"), "--output-limit")
    refused(cli("runs", "-n", "99999999999999999999"), "--last")
    zero = tmp_path / "zero.yml"
    zero.write_text(STEP.format(body='"true"') + "    timeout: 0s\n")
    refused(cli("check", zero, "-i", inventory), "zero.yml:5", "steps[0].timeout")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    refused(cli("audit", "verify", "--file", empty), "no audit events")
    taken = tmp_path / "taken.yml"  # `run` would be hidden by run.id / run.operator
    taken.write_text(
        "name: t\nparams:\n  run: {default: last}\ntargets: all\nsteps:\n  - shell: x\n"
    )
    refused(cli("check", taken, "-i", inventory), "taken.yml:2", "parameter name 'run' is taken")
