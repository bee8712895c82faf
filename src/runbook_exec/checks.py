"""What `check` verifies beyond the model: local files the steps need, template syntax, and
referenced playbooks (through `ansible-playbook --syntax-check`)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .errors import Problem
from .inventory import Host
from .plan import Plan
from .runbook import RunbookFile
from .steps import PlaybookStep, in_workspace
from .templating import TemplateProblem, is_template, names_used
from .transports.ansible import ansible_playbook_binary

SYNTAX_CHECK_TIMEOUT = 120


def local_files(runbook_file: RunbookFile, plan: Plan | None) -> Iterator[tuple[str, Any, str]]:
    """(field, loc, path) for every controller-side file a step reads, rendered when a plan
    is at hand; templated paths with no plan are skipped."""
    rendered = {(s.section, s.index): s for s in (plan.steps + plan.rollback)} if plan else {}
    for section, steps in (
        ("steps", runbook_file.runbook.steps),
        ("rollback", runbook_file.runbook.rollback),
    ):
        for index, step in enumerate(steps):
            for key, raw in step.files():
                loc = (section, index, *key)
                field = runbook_file.step_field(section, index, ".".join(map(str, key)))
                if not is_template(raw):
                    yield field, loc, raw
                    continue
                planned = rendered.get((section, index))
                for action in planned.actions if planned else ():
                    value: Any = action.action
                    for part in key:
                        value = value.get(part) if isinstance(value, dict) else None
                    if isinstance(value, str) and "at run time>" not in value:
                        yield field, loc, value


def per_host_ansible_args(runbook_file: RunbookFile, plan: Plan | None) -> list[Problem]:
    """A playbook or module step whose vars or args render differently on hosts of one
    batch: Ansible runs it once for them all, with one set, so it would fail on every host
    at run time. Refused before anything runs."""
    from .executor.ansible import PER_HOST_ARGS, ansible_call_key
    from .steps import Scope

    if plan is None:
        return []
    found = []
    for step in (*plan.steps, *plan.rollback):
        rendered = step.hosts
        kinds = {r.step.scope for r in rendered.values() if r.step is not None}
        if Scope.HOSTS not in kinds:
            continue
        for number, batch in enumerate(plan.batches, 1):
            keys = {
                ansible_call_key(r.step)
                for host in batch
                if (r := rendered.get(host)) is not None
                and r.step is not None
                and not r.render_at_run_time
            }
            if len(keys) > 1:
                found.append(
                    Problem(
                        f"{PER_HOST_ARGS} (batch {number}: {', '.join(batch[:5])}"
                        f"{', …' if len(batch) > 5 else ''})",
                        runbook_file.display_path,
                        runbook_file.line_of((step.section, step.index)),
                        runbook_file.step_field(step.section, step.index),
                    )
                )
                break
    return found


def braced_whens(runbook_file: RunbookFile) -> list[Problem]:
    """Warnings, not problems: each `when:` written as a template (`"{{ x }}"`), which is
    read as the expression inside it."""
    import yaml

    from .steps.base import braced_expression

    data = yaml.safe_load(runbook_file.text)
    found = []
    for section in ("steps", "rollback"):
        steps = data.get(section) if isinstance(data, dict) else None
        for index, step in enumerate(steps if isinstance(steps, list) else ()):
            raw = step.get("when") if isinstance(step, dict) else None
            inner = braced_expression(raw)
            if inner is not None:
                found.append(
                    Problem(
                        f"`when` takes an expression, not a template: {raw!r} is read as "
                        f"{inner!r} (write it without the braces)",
                        runbook_file.display_path,
                        runbook_file.line_of((section, index, "when")),
                        runbook_file.step_field(section, index, "when"),
                    )
                )
    return found


def missing_files(runbook_file: RunbookFile, plan: Plan | None) -> list[Problem]:
    problems: dict[tuple[str, str], Problem] = {}
    for field, loc, raw in local_files(runbook_file, plan):
        path = in_workspace(runbook_file.workspace, raw)
        if not path.exists() and (field, raw) not in problems:
            problems[(field, raw)] = Problem(
                f"file not found: {raw} (looked in {path.parent})",
                runbook_file.display_path,
                runbook_file.line_of(loc),
                field,
            )
    return list(problems.values())


def template_syntax(runbook_file: RunbookFile) -> list[Problem]:
    """Template and `when:` syntax in every step, checked without any host."""
    problems = []
    for section, steps in (
        ("steps", runbook_file.runbook.steps),
        ("rollback", runbook_file.runbook.rollback),
    ):
        for index, step in enumerate(steps):
            strings = list(_strings(step.payload(), (section, index)))
            if step.name:
                strings.append(((section, index, "name"), step.name))
            for loc, text in strings:
                try:
                    names_used(text)
                except TemplateProblem as exc:
                    problems.append(_at(runbook_file, loc, str(exc)))
            expressions = list(step.expressions())
            if step.when is not None:
                expressions.append((("when",), step.when))
            for key, text in expressions:
                try:
                    names_used(text, expression=True)
                except TemplateProblem as exc:
                    loc = (section, index, *key)
                    problems.append(_at(runbook_file, loc, str(exc)))
    return problems


def requirements(runbook_file: RunbookFile) -> list[Problem]:
    """What the controller lacks to run the runbook's step kinds (once per kind)."""
    problems: dict[str, Problem] = {}
    for section, steps in (
        ("steps", runbook_file.runbook.steps),
        ("rollback", runbook_file.runbook.rollback),
    ):
        for index, step in enumerate(steps):
            for message in step.requirements():
                line = runbook_file.line_of((section, index))
                field = runbook_file.step_field(section, index)
                problems.setdefault(
                    message, Problem(message, runbook_file.display_path, line, field)
                )
    return list(problems.values())


def _strings(value: Any, loc: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    if isinstance(value, str):
        yield loc, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*loc, key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from _strings(item, (*loc, position))


def _at(runbook_file: RunbookFile, loc: tuple[Any, ...], message: str) -> Problem:
    section, index, *rest = loc
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest).lstrip(".")
    field = runbook_file.step_field(section, index, path or None)
    return Problem(message, runbook_file.display_path, runbook_file.line_of(loc), field)


def playbook_syntax(runbook_file: RunbookFile) -> list[Problem]:
    """`ansible-playbook --syntax-check` on every playbook the runbook names (in parallel)."""
    jobs: dict[tuple[Path, Path | None], tuple[str, int | None]] = {}
    for section, steps in (
        ("steps", runbook_file.runbook.steps),
        ("rollback", runbook_file.runbook.rollback),
    ):
        for index, step in enumerate(steps):
            if not isinstance(step, PlaybookStep) or is_template(step.playbook):
                continue
            vault = step.vault_password_file
            if vault is not None and is_template(vault):
                continue  # its password file is known per host only: checked when it runs
            path = in_workspace(runbook_file.workspace, step.playbook)
            key = (path, in_workspace(runbook_file.workspace, vault) if vault else None)
            if path.exists() and key not in jobs:
                field = runbook_file.step_field(section, index, "playbook")
                jobs[key] = (field, runbook_file.line_of((section, index, "playbook")))
    if not jobs or ansible_playbook_binary() is None:
        return []  # a missing ansible-playbook is one of `requirements`
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda key: _syntax_check(*key), jobs))
    return [
        Problem(message, runbook_file.display_path, jobs[key][1], jobs[key][0])
        for key, message in zip(jobs, results, strict=True)
        if message
    ]


def _syntax_check(playbook: Path, vault_password_file: Path | None = None) -> str | None:
    command = ansible_playbook_binary()
    if command is None:
        return "cannot check playbook syntax: ansible-playbook is not installed"
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_HOST_PATTERN_MISMATCH": "ignore",
    }
    try:
        done = subprocess.run(
            [
                command,
                "--syntax-check",
                "-i",
                "localhost,",
                *(
                    ["--vault-password-file", str(vault_password_file)]
                    if vault_password_file
                    else []
                ),
                str(playbook),
            ],
            capture_output=True,
            text=True,
            timeout=SYNTAX_CHECK_TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"ansible-playbook --syntax-check took over {SYNTAX_CHECK_TIMEOUT}s"
    if done.returncode == 0:
        return None
    text = (done.stderr or done.stdout).strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("[WARNING]")]
    first = next((ln for ln in lines if ln.startswith("[ERROR]")), lines[0] if lines else text)
    origin = next((ln for ln in lines if ln.startswith("Origin:")), "")
    detail = re.sub(r"^\[ERROR\]:\s*", "", first)
    return f"playbook syntax: {detail} {origin}".strip()


def connections(hosts: Sequence[Host]) -> list[Problem]:
    """Inventory variables a connection needs, that cannot work: a port that is not a
    number from 1 to 65535."""
    problems = []
    for host in hosts:
        for name in ("ansible_port", "ansible_ssh_port"):
            raw = host.vars.get(name)
            if raw in (None, ""):
                continue
            try:
                port = int(raw)
            except (TypeError, ValueError):
                port = 0
            if not 1 <= port <= 65535 or isinstance(raw, bool):
                problems.append(
                    Problem(
                        f"host {host.name}: {name} {raw!r} is not a port number (1-65535)",
                        field=f"inventory {host.name}.{name}",
                    )
                )
            break
    return problems


def become_methods(runbook_file: RunbookFile, hosts: Sequence[Host]) -> list[Problem]:
    """Hosts that become another user by a method other than sudo, for a runbook with steps
    that run commands over our own SSH (which becomes through sudo only; Ansible's steps
    use any method Ansible knows)."""
    from .ansiblecfg import ansible_defaults

    book = runbook_file.runbook
    if not any(step.runs_commands for step in (*book.steps, *book.rollback)):
        return []
    config = ansible_defaults()
    problems = []
    for host in hosts:
        method = str(host.vars.get("ansible_become_method") or config.become_method)
        if config.becomes(host) and method != "sudo":
            where = "inventory" if "ansible_become_method" in host.vars else "ansible.cfg"
            problems.append(
                Problem(
                    f"host {host.name}: become method {method!r} (from its {where}) is not "
                    "supported by steps that run commands (shell, script, upload, release, "
                    "wait_for, creates/unless): they become through sudo; playbook and "
                    "module steps use any method",
                    field=f"inventory {host.name}.ansible_become_method",
                )
            )
    return problems
