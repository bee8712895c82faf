"""`runbook-exec run` on real sshd hosts: step kinds, batches, failure policy, timeouts and
host keys. Each test gets four fresh hosts (host1..host4 in group `app`)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import wait_until
from runbook_exec.testing.lab import SshLab

Run = Callable[..., subprocess.CompletedProcess[str]]
Write = Callable[[str, str], Path]


def header(body: str, *, batches: str = '["100%"]', extra: str = "") -> str:
    return f"name: test\ntargets: app\nstrategy:\n  batches: {batches}\n{extra}steps:\n{body}"


def marker(hosts: SshLab, host: str, name: str) -> Path:
    return hosts.host(host).root / name


def show(runbook_exec: Run, run_id: str) -> dict[str, object]:
    done = runbook_exec("show", run_id, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def summary(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_every_json_output_has_a_schema_and_one_time_format(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    """What scripts parse: `schema` first, every time RFC 3339 UTC with milliseconds."""
    import re

    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    path = write("rb.yml", header("  - shell: echo hi\n"))
    done = runbook_exec("run", path, "--json")
    outputs = {
        "run": summary(done),
        "runs": json.loads(runbook_exec("runs", "--json").stdout),
        "show": show(runbook_exec, str(summary(done)["run_id"])),
        "releases": json.loads(runbook_exec("releases", "--json").stdout),
        "plan": json.loads(runbook_exec("plan", path, *hosts.cli_args()[:2], "--json").stdout),
    }
    times: list[str] = []

    def walk(value: object, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif key in ("started", "finished", "at", "started_at", "finished_at", "since"):
            assert value is None or (isinstance(value, str) and stamp.match(value)), (key, value)
            times.append(str(value))

    for name, output in outputs.items():
        assert next(iter(output)) == "schema" and output["schema"] == 1, name
        walk(output)
    assert len([t for t in times if t != "None"]) >= 4


@pytest.fixture
def web_server() -> Iterator[str]:
    """A local HTTP server answering /health with 200 "healthy" and anything else with 503."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            healthy = self.path == "/health"
            body = b"healthy" if healthy else b"down"
            self.send_response(200 if healthy else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("launch", ["cold", "warm"], indirect=True)
def test_every_step_kind_acts_on_real_hosts(
    runbook_exec: Run, write: Write, hosts: SshLab, web_server: str, tmp_path: Path
) -> None:
    write("files/hello.txt", "hello upload\n")
    write("files/app.conf.j2", "host={{ inventory_hostname }} port={{ ansible_port }}\n")
    write("files/probe.sh", '#!/bin/sh\necho "script on $RBX_LAB_HOST args $*" > "$1/script.out"\n')
    body = f"""\
  - name: Shell
    shell: echo "shell on $RBX_LAB_HOST" > {{{{ lab_root | quote }}}}/shell.out
  - name: Command
    command: [touch, "{{{{ lab_root }}}}/command.out"]
  - name: Script
    script: {{src: files/probe.sh, args: ["{{{{ lab_root }}}}", two]}}
  - name: Upload
    upload: {{src: files/hello.txt, dest: "{{{{ lab_root }}}}/hello.txt", mode: "0600"}}
  - name: Template
    template: {{src: files/app.conf.j2, dest: "{{{{ lab_root }}}}/app.conf"}}
  - name: HTTP
    http: {{url: "{web_server}/health", status: 200, contains: healthy}}
  - name: Port
    wait_for: {{port: "{{{{ ansible_port }}}}", timeout: 10s}}
  - name: Until
    wait_for: {{command: "test -f {{{{ lab_root }}}}/command.out", timeout: 10s}}
  - name: Local
    local: echo local {{{{ inventory_hostname }}}} >> {tmp_path}/local.out
  - name: Pause
    wait: 1s
  - name: Register
    command: [cat, "{{{{ lab_root }}}}/hello.txt"]
    register: hello
  - name: Use it
    shell: echo {{{{ hello.stdout | quote }}}} > {{{{ lab_root | quote }}}}/registered.out
    when: hello.rc == 0 and inventory_hostname != 'host2'
  - name: Guarded
    shell: echo again >> {{{{ lab_root | quote }}}}/shell.out
    creates: "{{{{ lab_root }}}}/shell.out"
  - name: Unless
    shell: echo nope > {{{{ lab_root | quote }}}}/unless.out
    unless: test -f {{{{ lab_root | quote }}}}/hello.txt
  - name: Once
    shell: echo once >> {{{{ lab_root | quote }}}}/once.out
    run_once: true
  - name: Tolerated
    shell: exit 3
    ignore_errors: true
  - name: Retried
    shell: >-
      n=$(cat {{{{ lab_root | quote }}}}/tries 2>/dev/null || echo 0);
      echo $((n+1)) > {{{{ lab_root | quote }}}}/tries; test $n -ge 2
    retries: 3
    delay: 100ms
"""
    done = runbook_exec("run", write("runbooks/all.yml", header(body)), "--json")
    assert done.returncode == 0, done.stderr
    for name in ("host1", "host2", "host3", "host4"):
        root = hosts.host(name).root
        assert (root / "shell.out").read_text() == f"shell on {name}\n"
        assert (root / "command.out").exists()
        assert (root / "script.out").read_text() == f"script on {name} args {root} two\n"
        assert (root / "hello.txt").read_text() == "hello upload\n"
        assert (root / "hello.txt").stat().st_mode & 0o777 == 0o600
        assert (root / "app.conf").read_text() == f"host={name} port={hosts.host(name).port}\n"
        assert (root / "registered.out").exists() == (name != "host2")
        assert not (root / "unless.out").exists()
        assert (root / "tries").read_text() == "3\n"
    assert (hosts.host("host1").root / "registered.out").read_text() == "hello upload\n"
    assert sorted((tmp_path / "local.out").read_text().split("\n")[:-1]) == [
        f"local host{i}" for i in range(1, 5)
    ]
    assert (hosts.host("host1").root / "once.out").read_text() == "once\n"
    assert not any((hosts.host(h).root / "once.out").exists() for h in ("host2", "host3", "host4"))
    record = show(runbook_exec, str(summary(done)["run_id"]))
    steps = record["host_steps"]
    assert isinstance(steps, list)
    tolerated = [s for s in steps if s["step_name"] == "Tolerated"]
    assert {s["status"] for s in tolerated} == {"failed"}
    assert all(s["message"].startswith("ignored:") for s in tolerated)
    retried = [s for s in steps if s["step_name"] == "Retried"]
    assert {s["attempts"] for s in retried} == {3}


def test_failed_http_check_fails_the_host(runbook_exec: Run, write: Write, web_server: str) -> None:
    body = f'  - http: {{url: "{web_server}/missing", status: 200}}\n'
    done = runbook_exec("run", write("rb.yml", header(body, extra="  max_fail_percentage: 100\n")))
    assert done.returncode == 1
    assert "HTTP 503, expected 200" in done.stdout


FAIL_ON = """\
  - name: Mark
    shell: touch {{{{ lab_root | quote }}}}/marked
  - name: Break
    shell: test {{{{ inventory_hostname }}}} != {bad}
  - name: After
    shell: touch {{{{ lab_root | quote }}}}/after
"""


def test_a_failed_batch_stops_the_run_and_later_batches_never_start(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    path = write("rb.yml", header(FAIL_ON.format(bad="host1"), batches="[2]"))
    done = runbook_exec("run", path, "--json")
    assert done.returncode == 1
    # As with Ansible, the batch stops right after the step that broke the threshold.
    assert summary(done)["hosts"] == {
        "host1": "failed",
        "host2": "stopped",
        "host3": "not_reached",
        "host4": "not_reached",
    }
    assert marker(hosts, "host2", "marked").exists()
    assert not marker(hosts, "host2", "after").exists()
    assert not marker(hosts, "host1", "after").exists()
    assert not marker(hosts, "host3", "marked").exists()
    assert not marker(hosts, "host4", "marked").exists()


@pytest.mark.parametrize("launch", ["cold", "warm"], indirect=True)
def test_failures_within_max_fail_percentage_go_on_but_still_exit_1(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    text = header(FAIL_ON.format(bad="host1"), batches="[2]", extra="  max_fail_percentage: 50\n")
    done = runbook_exec("run", write("rb.yml", text), "--json")
    assert done.returncode == 1
    assert summary(done)["status"] == "failed"
    assert summary(done)["hosts"]["host1"] == "failed"  # type: ignore[index]
    assert all(marker(hosts, h, "after").exists() for h in ("host2", "host3", "host4"))
    assert "failed hosts: host1" in done.stderr


def test_on_failure_continue_lets_the_other_hosts_finish(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    text = header(FAIL_ON.format(bad="host3"), batches="[1]").replace(
        "steps:", "on_failure: continue\nsteps:"
    )
    done = runbook_exec("run", write("rb.yml", text), "--json")
    assert done.returncode == 1
    assert [h for h, s in summary(done)["hosts"].items() if s == "failed"] == ["host3"]  # type: ignore[union-attr]
    assert all(marker(hosts, h, "after").exists() for h in ("host1", "host2", "host4"))


def test_rollback_touches_exactly_the_changed_hosts_newest_batch_first(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    text = (
        header(FAIL_ON.format(bad="host2"), batches="[1, 1, 2]").replace(
            "steps:", "on_failure: rollback\nsteps:"
        )
        + "rollback:\n  - name: Undo\n    shell: >-\n      rm -f {{ lab_root | quote }}/marked;\n"
        "      date +%s%N > {{ lab_root | quote }}/undone\n"
    )
    done = runbook_exec("run", write("rb.yml", text), "--json")
    assert done.returncode == 1
    assert summary(done)["status"] == "rolled_back"
    assert summary(done)["hosts"] == {
        "host1": "rolled_back",
        "host2": "rolled_back",
        "host3": "not_reached",
        "host4": "not_reached",
    }
    for name in ("host1", "host2"):
        assert not marker(hosts, name, "marked").exists()
    assert int(marker(hosts, "host2", "undone").read_text()) < int(
        marker(hosts, "host1", "undone").read_text()
    )
    for name in ("host3", "host4"):
        assert list(hosts.host(name).root.iterdir()) == []


def test_a_frozen_host_fails_its_step_at_the_timeout_and_the_run_goes_on(
    runbook_exec: Run, write: Write, hosts: SshLab, tmp_path: Path
) -> None:
    body = """\
  - name: First
    shell: touch {{ lab_root | quote }}/first
  - name: Slow
    shell: sleep 2; touch {{ lab_root | quote }}/slow
    timeout: 5s
"""
    path = write("rb.yml", header(body, extra="  max_fail_percentage: 50\n"))
    process = runbook_exec.spawn("run", path, "--json")  # type: ignore[attr-defined]
    try:
        wait_until(lambda: marker(hosts, "host2", "first").exists())
        hosts.host("host2").freeze()
        out, err = process.communicate(timeout=60)
    finally:
        hosts.host("host2").thaw()
        process.kill()
    assert process.returncode == 1, err
    result = json.loads(out)
    assert result["hosts"]["host2"] == "failed"
    assert [h for h, s in result["hosts"].items() if s == "ok"] == ["host1", "host3", "host4"]
    assert "TIMEOUT host2 · Slow: timed out after 5s" in err


def test_unknown_host_keys_are_refused_unless_accepted(
    runbook_exec: Run, write: Write, hosts: SshLab, tmp_path: Path
) -> None:
    path = write("rb.yml", header("  - shell: 'true'\n", extra="  max_fail_percentage: 100\n"))
    empty = tmp_path / "known_hosts"
    hosts.known_hosts.rename(tmp_path / "real_known_hosts")
    hosts.known_hosts.write_text("")
    done = runbook_exec("run", path, "--json")
    assert done.returncode == 1
    assert set(summary(done)["hosts"].values()) == {"failed"}  # type: ignore[union-attr]
    assert "host key is not in" in done.stderr
    done = runbook_exec("run", path, "--json", "--accept-new-host-keys")
    assert done.returncode == 0, done.stderr
    assert len(hosts.known_hosts.read_text().splitlines()) == 4
    assert not empty.exists()


def test_a_changed_host_key_is_refused_even_with_accept_new(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    path = write("rb.yml", header("  - shell: 'true'\n", extra="  max_fail_percentage: 100\n"))
    lines = hosts.known_hosts.read_text().splitlines()
    other_key = (hosts.host("host2").dir / "host_key.pub").read_text().split()[1]
    lines[0] = " ".join([*lines[0].split()[:2], other_key])
    hosts.known_hosts.write_text("\n".join(lines) + "\n")
    done = runbook_exec("run", path, "--json", "--accept-new-host-keys")
    assert done.returncode == 1
    assert summary(done)["hosts"]["host1"] == "failed"  # type: ignore[index]
    assert "host key does not match" in done.stderr


def test_shell_metacharacters_reach_the_host_byte_for_byte(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    nasty = "a'b\"c $(touch /tmp/rbx-pwned) `id` ; rm -rf / && {{ 7*7 }} {% raw %} \\ end"
    body = """\
  - shell: printf %s {{ value | quote }} > {{ lab_root | quote }}/via-shell
  - command: [sh, -c, 'printf %s "$1" > "$2"', sh, "{{ value }}", "{{ lab_root }}/via-command"]
"""
    text = header(body).replace("steps:", "params:\n  value: {type: str}\nsteps:")
    done = runbook_exec("run", write("rb.yml", text), "-e", f"value={nasty}")
    assert done.returncode == 0, done.stderr
    for name in ("host1", "host4"):
        assert marker(hosts, name, "via-shell").read_text() == nasty
        assert marker(hosts, name, "via-command").read_text() == nasty
    assert not Path("/tmp/rbx-pwned").exists()


@pytest.mark.parametrize("launch", ["cold", "warm"], indirect=True)
def test_bad_input_is_refused_before_anything_runs(runbook_exec: Run, write: Write) -> None:
    done = runbook_exec("run", write("rb.yml", header("  - shel: x\n")))
    assert done.returncode == 2 and "did you mean 'shell'" in done.stderr
    done = runbook_exec("runs", "--json")
    assert json.loads(done.stdout) == {"schema": 1, "runs": []}


def test_run_makes_every_check_check_makes_before_any_step(
    runbook_exec: Run, write: Write, hosts: SshLab, tmp_path: Path
) -> None:
    """A missing upload source or a playbook with a syntax error in step 2: step 1 runs
    nowhere, no run is recorded, and the problems are the ones `check` names."""
    (tmp_path / "broken.yml").write_text("- hosts: all\n  tasks:\n    - debug: {msg: [\n")
    body = (
        "  - shell: touch {{ lab_root | quote }}/first\n"
        "  - upload: {src: no-such-file.tar.gz, dest: /tmp/x}\n"
        "  - playbook: broken.yml\n"
    )
    path = write("rb.yml", header(body))
    done = runbook_exec("run", path)
    checked = runbook_exec("check", path, *hosts.cli_args()[:2])
    assert done.returncode == 2 == checked.returncode, done.stdout + done.stderr
    for output in (done.stderr, checked.stderr):
        assert "steps[1].upload.src" in output and "no-such-file.tar.gz" in output
        assert "steps[2].playbook" in output
    assert not any(marker(hosts, h, "first").exists() for h in ("host1", "host2"))
    assert json.loads(runbook_exec("runs", "--json").stdout)["runs"] == []


def test_a_port_that_is_not_a_number_is_bad_input(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    port = hosts.host("host2").port
    text = hosts.inventory.read_text()
    hosts.inventory.write_text(text.replace(f"ansible_port={port} ", "ansible_port=notaport ", 1))
    done = runbook_exec("run", write("rb.yml", header("  - shell: touch {{ lab_root }}/x\n")))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "host host2: ansible_port 'notaport' is not a port number" in done.stderr
    assert json.loads(runbook_exec("runs", "--json").stdout)["runs"] == []
    assert not marker(hosts, "host1", "x").exists()


def test_ansible_become_runs_steps_through_sudo(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    if os.geteuid() != 0 or shutil.which("sudo") is None:
        pytest.skip("needs root (to grant the lab user sudo) and sudo installed")
    hosts.allow_sudo()
    text = hosts.inventory.read_text().replace("lab_root=", "ansible_become=true lab_root=")
    hosts.inventory.write_text(text)
    body = (
        "  - command: [id, -u]\n    register: who\n"
        "  - shell: echo {{ who.stdout }} > /tmp/rbx-become-{{ inventory_hostname }}\n"
    )
    done = runbook_exec("run", write("rb.yml", header(body)))
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("host1", "host4"):
        made = Path(f"/tmp/rbx-become-{name}")
        assert made.read_text() == "0\n"
        assert made.stat().st_uid == 0
        made.unlink()


def test_ssh_config_gives_what_the_inventory_leaves_out(
    runbook_exec: Run, write: Write, hosts: SshLab, tmp_path: Path
) -> None:
    """An inventory host that is only an ~/.ssh/config alias: HostName, Port, User and
    IdentityFile come from there, as they would for OpenSSH and Ansible."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    target = hosts.host("host2")
    (home / ".ssh" / "config").write_text(
        f"Host web-alias\n  HostName 127.0.0.1\n  Port {target.port}\n  User {hosts.user}\n"
        f"  IdentityFile {hosts.client_key}\n"
    )
    inventory = write("alias.ini", "web-alias\n")
    runbook = write(
        "alias.yml",
        f"name: alias\ntargets: web-alias\nsteps:\n  - shell: echo hi > {target.root}/alias\n",
    )
    done = runbook_exec("run", runbook, "-i", inventory, env={"HOME": str(home)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target.root / "alias").read_text() == "hi\n"


def test_ansible_cfg_decides_inventory_user_key_and_become_as_for_ansible(
    runbook_exec: Run, hosts: SshLab, tmp_path: Path
) -> None:
    """A site's ansible.cfg: `inventory =`, remote_user, private_key_file and
    [privilege_escalation] become — and an inventory that names none of them."""
    import sys

    become = os.geteuid() == 0 and shutil.which("sudo") is not None
    if become:
        hosts.allow_sudo()
    site = tmp_path / "site"
    site.mkdir()
    target = hosts.host("host3")
    (site / "hosts.ini").write_text(
        f"[app]\nweb-a ansible_host=127.0.0.1 ansible_port={target.port}\n"
    )
    (site / "ansible.cfg").write_text(
        "[defaults]\ninventory = hosts.ini\n"
        f"remote_user = {hosts.user}\nprivate_key_file = {hosts.client_key}\n"
        + ("[privilege_escalation]\nbecome = True\n" if become else "")
    )
    (site / "rb.yml").write_text(
        f"name: cfg\ntargets: app\nsteps:\n  - shell: id -u > {target.root}/who-cfg\n"
        "  - module:\n      name: ansible.builtin.shell\n"
        f"      args: {{cmd: id -u > {target.root}/who-module}}\n"
    )
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("runbook-exec")),
            "run",
            "rb.yml",
            "--known-hosts",
            str(hosts.known_hosts),
            "--db",
            runbook_exec.db,
        ],  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        cwd=site,
        env=runbook_exec.env,  # type: ignore[attr-defined]  # ./ansible.cfg, found as Ansible does
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    expected = "0" if become else str(os.geteuid())
    assert (target.root / "who-cfg").read_text().strip() == expected
    assert (target.root / "who-module").read_text().strip() == expected
