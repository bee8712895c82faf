"""Parameters: typed, checked against their declarations, secrets never echoed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runbook_exec.errors import ParameterError
from runbook_exec.params import GivenValue, parse_extra_vars, resolve_params
from runbook_exec.runbook import RunbookFile, load_runbook

RUNBOOK = """\
name: params
targets: web
params:
  version:  {type: str, required: true, pattern: '^[0-9A-Za-z._-]+$'}
  count:    {type: int, default: 3}
  ratio:    {type: float, default: 0.5}
  verbose:  {type: bool, default: false}
  hosts:    {type: list, default: []}
  pause:    {type: duration, default: 30s}
  artifact: {type: path}
  colour:   {choices: [red, green]}
  token:    {type: str, secret: true, env: RBX_TEST_TOKEN, pattern: '^[a-z]+$'}
steps:
  - shell: echo {{ version | quote }}
"""


@pytest.fixture
def runbook(write: Callable[[str, str], Path]) -> RunbookFile:
    return load_runbook(write("params.yml", RUNBOOK), "params.yml")


def resolve(
    runbook: RunbookFile, *items: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> dict[str, Any]:
    given = parse_extra_vars(list(items), cwd)
    return dict(resolve_params(runbook, given, env or {}, cwd).values)


def messages(exc: pytest.ExceptionInfo[ParameterError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


def test_values_are_converted_to_their_declared_types(runbook: RunbookFile, tmp_path: Path) -> None:
    (tmp_path / "a.tgz").write_bytes(b"x")
    values = resolve(
        runbook,
        "version=1.4.2",
        "count=7",
        "ratio=0.25",
        "verbose=yes",
        "hosts=a, b,c",
        "pause=1m30s",
        "artifact=a.tgz",
        "colour=red",
        cwd=tmp_path,
    )
    assert values["version"] == "1.4.2"
    assert values["count"] == 7 and values["ratio"] == 0.25 and values["verbose"] is True
    assert values["hosts"] == ["a", "b", "c"] and values["pause"] == 90.0
    assert values["artifact"] == str(tmp_path / "a.tgz")
    assert values["token"] is None


def test_defaults_apply_and_later_values_win(runbook: RunbookFile) -> None:
    values = resolve(runbook, "version=1", "version=2")
    assert values["version"] == "2" and values["count"] == 3 and values["pause"] == 30.0


def test_parameter_file_gives_native_values(runbook: RunbookFile, tmp_path: Path) -> None:
    (tmp_path / "p.yml").write_text("version: '2.0'\ncount: 9\nhosts: [x, y]\n")
    values = resolve(runbook, "@p.yml", cwd=tmp_path)
    assert values["version"] == "2.0" and values["count"] == 9 and values["hosts"] == ["x", "y"]


def test_a_bare_yaml_boolean_is_not_text(runbook: RunbookFile, tmp_path: Path) -> None:
    """`version: false` in a parameter file is no release name "False"."""
    (tmp_path / "p.yml").write_text("version: false\n")
    with pytest.raises(ParameterError) as caught:
        resolve(runbook, "@p.yml", cwd=tmp_path)
    assert any("version" in m and "quote it" in m for m in messages(caught)), messages(caught)
    (tmp_path / "q.yml").write_text("version: 'false'\n")
    assert resolve(runbook, "@q.yml", cwd=tmp_path)["version"] == "false"


def test_list_in_flow_syntax(runbook: RunbookFile) -> None:
    assert resolve(runbook, "version=1", "hosts=[a, 'b,c']")["hosts"] == ["a", "b,c"]


def test_secret_comes_from_its_environment_variable(runbook: RunbookFile) -> None:
    values = resolve(runbook, "version=1", env={"RBX_TEST_TOKEN": "abcd"})
    assert values["token"] == "abcd"
    given = parse_extra_vars(["version=1"])
    resolved = resolve_params(runbook, given, {"RBX_TEST_TOKEN": "abcd"})
    assert resolved.masked()["token"] == "********"
    assert resolved.secrets.texts == ("abcd",)


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (["version=1", "nope=1"], "-e nope: 'nope' is not a parameter of this runbook"),
        ([], "params.yml:4: params.version: required; give it with -e version=VALUE"),
        (["version=1 2"], "params.yml:4: params.version: '1 2' (from -e) does not match pattern"),
        (
            ["version=1", "count=lots"],
            "params.yml:5: params.count: 'lots' (from -e) is not an integer",
        ),
        (["version=1", "ratio=x"], "params.yml:6: params.ratio: 'x' (from -e) is not a number"),
        (
            ["version=1", "verbose=maybe"],
            "params.yml:7: params.verbose: 'maybe' (from -e) is not a boolean",
        ),
        (
            ["version=1", "pause=soon"],
            "params.yml:9: params.pause: 'soon' (from -e) is not a duration; write e.g. 30s",
        ),
        (
            ["version=1", "artifact=/no/such/file"],
            "params.yml:10: params.artifact: '/no/such/file' (from -e) does not exist",
        ),
        (
            ["version=1", "colour=blue"],
            "params.yml:11: params.colour: 'blue' (from -e) is not one of ['red', 'green']",
        ),
        (["version"], "-e 'version': expected NAME=VALUE or @FILE.yml"),
        (["@missing.yml"], "missing.yml: file not found"),
    ],
)
def test_bad_values_are_refused_with_where_and_why(
    runbook: RunbookFile, items: list[str], expected: str
) -> None:
    with pytest.raises(ParameterError) as caught:
        resolve(runbook, *items)
    assert any(m.startswith(expected) for m in messages(caught)), messages(caught)


def test_every_bad_value_is_reported_at_once(runbook: RunbookFile) -> None:
    with pytest.raises(ParameterError) as caught:
        resolve(runbook, "count=x", "ratio=y", "nope=1")
    assert len(caught.value.problems) == 4  # nope, version missing, count, ratio


def test_a_bad_secret_value_is_never_echoed(runbook: RunbookFile) -> None:
    with pytest.raises(ParameterError) as caught:
        resolve(runbook, "version=1", env={"RBX_TEST_TOKEN": "Sup3r-Secret"})
    text = "\n".join(messages(caught))
    assert "Sup3r-Secret" not in text
    assert "the secret value (from $RBX_TEST_TOKEN) does not match pattern" in text


def test_given_value_keeps_its_origin() -> None:
    assert parse_extra_vars(["a=b=c"]) == {"a": GivenValue("b=c", "-e")}
