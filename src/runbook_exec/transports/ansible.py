"""Ansible through ansible-runner: a playbook on exactly the given hosts, with our connection
settings, and every task's result on every host handed back as it happens.

ansible-runner runs in a worker thread (it blocks); its events are passed to the event loop
with `call_soon_threadsafe`. It works in a private scratch folder (see `scratch`) removed
afterwards, and is set up so that nothing that could tell a secret is written there: extra
vars and generated plays come through named pipes, and neither the environment nor the
output is kept in files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..events import TaskResult
from ..masking import Secrets
from ..scratch import private_folder, socket_folder

RESULT_LIMIT = 4096
PRINTED_LIMIT = 1000  # lines of ansible-playbook's output kept (in memory) to explain a failure
OWN_VARIABLES = "RUNBOOK_EXEC_"  # ours (the audit key among them): ansible never needs them
TASK_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_skipped": "skipped",
    "runner_on_unreachable": "unreachable",
}


@dataclass
class PlaybookOutcome:
    """How a playbook went, host by host."""

    hosts: dict[str, str] = field(default_factory=dict)  # ok | failed | unreachable
    messages: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, list[TaskResult]] = field(default_factory=dict)
    rc: int | None = None
    timed_out: bool = False
    error: str = ""


@dataclass(frozen=True)
class AnsibleSettings:
    """Our run's connection settings, carried over to Ansible."""

    known_hosts: Path
    accept_new_host_keys: bool
    forks: int
    timeout: float
    secrets: Secrets = field(default_factory=Secrets)
    # as --become-password-file (what -K is to ansible-playbook): a host's own
    # ansible_become_password still wins
    become_password: str | None = field(default=None, repr=False)


def one_task_play(name: str, module: str, args: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A `module:` step as a playbook of one task, so it runs exactly like a playbook."""
    return [{"hosts": "all", "gather_facts": False, "tasks": [{"name": name, module: dict(args)}]}]


def environment(settings: AnsibleSettings) -> dict[str, str]:
    """What Ansible is told. Its SSH control sockets live in this process's own folder: a
    master left by someone's earlier ansible run (ControlPersist, in ~/.ansible/cp) would
    otherwise be reused, and our known_hosts never consulted."""
    from ..ansiblecfg import ansible_defaults

    checking = "accept-new" if settings.accept_new_host_keys else "yes"
    # ansible-playbook runs in a scratch folder: the ansible.cfg it would have found from
    # the working directory is named to it.
    config = ansible_defaults().config_file
    found = {"ANSIBLE_CONFIG": config} if config and "ANSIBLE_CONFIG" not in os.environ else {}
    return {
        **found,
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(socket_folder("ansible-cp")),
        # Ansible's own short name for each socket, in that folder, whatever a user set
        "ANSIBLE_SSH_CONTROL_PATH": "",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_ARGS": (
            "-C -o ControlMaster=auto -o ControlPersist=60s "
            f"-o UserKnownHostsFile={settings.known_hosts} -o StrictHostKeyChecking={checking}"
        ),
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_SYSTEM_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_FORCE_COLOR": "False",
    }


async def run_playbook(
    playbook: Path | list[dict[str, Any]],
    inventory: Sequence[str],
    hosts: Sequence[str],
    settings: AnsibleSettings,
    *,
    extravars: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
    skip_tags: Sequence[str] = (),
    check: bool = False,
    vault_password_file: Path | None = None,
    on_task: Callable[[TaskResult], None] = lambda result: None,
    should_cancel: Callable[[], bool] = lambda: False,
) -> PlaybookOutcome:
    """Run `playbook` on `hosts` (and no others) of `inventory`; report each task result."""
    loop = asyncio.get_running_loop()
    outcome = PlaybookOutcome(hosts={host: "ok" for host in hosts})
    seen: set[str] = set()
    printed: list[str] = []

    def handle(event: dict[str, Any]) -> bool:
        if event.get("stdout") and len(printed) < PRINTED_LIMIT:
            printed.append(str(event["stdout"]))
        status = TASK_EVENTS.get(event.get("event", ""))
        data = event.get("event_data", {})
        if status is None or "host" not in data:
            return False
        result = _task_result(status, data, settings.secrets)
        loop.call_soon_threadsafe(_record, outcome, result, seen, on_task)
        return False  # nothing kept on disk: we have what we need

    try:
        with private_folder("ansible") as workdir, contextlib.ExitStack() as feeds:
            # What may hold a secret (the extra vars; a module step's arguments) reaches
            # ansible-playbook through named pipes: it is never written to a file.
            if not isinstance(playbook, Path):
                playbook = feeds.enter_context(_Feed(workdir / "play.json", playbook))
            cmdline = ["--check"] if check else []
            if extravars:
                given = feeds.enter_context(_Feed(workdir / "extravars.json", dict(extravars)))
                cmdline += ["--extra-vars", f"@{given}"]
            if vault_password_file is not None:
                cmdline += ["--vault-password-file", str(vault_password_file)]
            if settings.become_password is not None:
                raw = settings.become_password.encode() + b"\n"
                secret = feeds.enter_context(_Feed(workdir / "become", raw))
                cmdline += ["--become-password-file", str(secret)]
            # With `binary` given, ansible-runner passes no playbook itself: it goes last.
            cmdline.append(str(playbook.resolve()))
            envvars = {**environment(settings), "ANSIBLE_LOCAL_TEMP": str(workdir / "tmp")}
            runner = await asyncio.to_thread(
                _run_ansible_runner,
                private_data_dir=str(workdir),
                inventory=[os.path.abspath(source) for source in inventory],
                limit=",".join(hosts),
                forks=max(1, min(settings.forks, len(hosts))),
                tags=",".join(tags) or None,
                skip_tags=",".join(skip_tags) or None,
                cmdline=shlex.join(cmdline),
                envvars=envvars,
                timeout=int(settings.timeout),
                event_handler=handle,
                cancel_callback=should_cancel,
                binary=ansible_playbook_binary() or "ansible-playbook",
            )
        await asyncio.sleep(0)  # let the last events queued from the thread be recorded
        outcome.rc = runner.rc
        outcome.timed_out = runner.status == "timeout"
        if runner.status in ("failed", "timeout", "canceled") and not outcome.tasks:
            outcome.error = _error_text(printed, runner.status)
    except Exception as exc:
        outcome.rc = None
        outcome.error = f"ansible-runner: {exc}"
    for host in hosts:
        if host not in seen and outcome.hosts[host] == "ok":
            outcome.hosts[host] = "failed"
            why = outcome.error or ("timed out" if outcome.timed_out else "no task ran on it")
            outcome.messages[host] = why
    return outcome


def _run_ansible_runner(
    *,
    event_handler: Callable[[dict[str, Any]], bool],
    cancel_callback: Callable[[], bool],
    **options: Any,
) -> Any:
    """ansible-runner's Runner, set up to keep nothing on disk that could tell a secret:
    no env/ files, no stdout file, no fact cache, no artifacts/<ident>/command (the full
    command line and environment, which it always writes; removed as soon as it is written),
    and none of our own RUNBOOK_EXEC_* variables (the audit key among them) in the
    environment ansible-playbook gets."""
    from ansible_runner import Runner, RunnerConfig

    config = RunnerConfig(
        quiet=True,
        suppress_env_files=True,
        settings={"suppress_output_file": True},
        fact_cache_type="memory",
        **options,
    )
    config.prepare()
    config.env = {k: v for k, v in config.env.items() if not k.startswith(OWN_VARIABLES)}

    def forget_command(status: Mapping[str, Any], runner_config: Any) -> None:
        if status.get("status") == "running":  # the file was written just before
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(runner_config.artifact_dir, "command"))

    runner = Runner(
        config,
        event_handler=event_handler,
        cancel_callback=cancel_callback,
        status_handler=forget_command,
    )
    runner.run()
    return runner


class _Feed:
    """A named pipe that hands `value` (bytes as they are, anything else as JSON) to the
    first process that reads it, and is
    then removed. What passes through it is never on disk, so a kill -9 leaves nothing
    behind (ansible-runner hands an SSH key to ssh-agent the same way). ansible-playbook
    reads its extra vars and its playbook once each; were a second read ever made, it would
    find no file rather than wait for one."""

    def __init__(self, path: Path, value: Any) -> None:
        self.path = path
        self.data = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.closing = False
        self.thread = threading.Thread(target=self._serve, name=f"feed {path.name}", daemon=True)

    def __enter__(self) -> Path:
        os.mkfifo(self.path, 0o600)
        self.thread.start()
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.closing = True
        while self.thread.is_alive():
            # Nobody read it: the writer waits in open() for a reader. Be that reader.
            with contextlib.suppress(OSError):
                os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))
            self.thread.join(0.05)
        self.path.unlink(missing_ok=True)

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # as BrokenPipeError: the reader went away
            fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens the pipe
            try:
                self.path.unlink()
                view = memoryview(b"" if self.closing else self.data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)


def ansible_playbook_binary() -> str | None:
    """The ansible-playbook installed beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("ansible-playbook")
    return str(beside) if beside.exists() else shutil.which("ansible-playbook")


def _task_result(status: str, data: Mapping[str, Any], secrets: Secrets) -> TaskResult:
    # Masked before it is encoded and capped: JSON escaping or the cap could otherwise
    # leave a secret, or a piece of one, unrecognisable to a later mask.
    res = secrets.data(data.get("res") or {})
    if status == "ok" and res.get("changed"):
        status = "changed"
    if status in ("failed", "unreachable"):
        message = _failure(res)
    else:
        message = str(res.get("msg") or res.get("stderr") or res.get("stdout") or "").strip()
        message = message.splitlines()[0] if message else ""
    text = json.dumps(res, sort_keys=True, default=str)
    if len(text) > RESULT_LIMIT:
        text = text[:RESULT_LIMIT] + f"… [{len(text) - RESULT_LIMIT} characters omitted]"
    return TaskResult(
        host=str(data["host"]),
        task=str(data.get("task") or data.get("task_action") or "task"),
        status=status,
        message=message,
        result=text,
        ignored=bool(data.get("ignore_errors")),
    )


def _failure(res: Mapping[str, Any]) -> str:
    """Why a task failed, in one line a person can act on: the module's msg, the exit code,
    and the last line of stderr (or of stdout, when there is no msg), which says what went
    wrong where msg says only "non-zero return code"."""
    msg = str(res.get("msg") or "").strip()
    parts = [msg.splitlines()[0]] if msg else []
    rc = res.get("rc")
    if rc not in (None, 0):
        parts.append(f"rc {rc}")
    said = str(res.get("stderr") or "").strip() or ("" if msg else str(res.get("stdout") or ""))
    lines = [line.strip() for line in said.strip().splitlines() if line.strip()]
    text = ", ".join(parts)
    if lines and lines[-1] not in text:
        text = f"{text}: {lines[-1][:300]}" if text else lines[-1][:300]
    return text


def _record(
    outcome: PlaybookOutcome,
    result: TaskResult,
    seen: set[str],
    on_task: Callable[[TaskResult], None],
) -> None:
    seen.add(result.host)
    outcome.tasks.setdefault(result.host, []).append(result)
    first_failure = outcome.hosts.get(result.host) == "ok"
    if result.status in ("failed", "unreachable") and not result.ignored and first_failure:
        outcome.hosts[result.host] = result.status
        outcome.messages[result.host] = f"{result.task}: {result.message}".rstrip(": ")
    on_task(result)


def _error_text(printed: Sequence[str], status: str) -> str:
    """Why ansible-playbook failed before any task ran (syntax, inventory, options)."""
    lines = [ln.strip() for text in printed for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln]
    return (errors or lines or [f"ansible-playbook ended {status}"])[0][:500]
