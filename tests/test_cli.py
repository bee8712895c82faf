"""`runbook-exec check` and `plan` as a user runs them: messages, exit codes, output."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from runbook_exec.testing.lab import SshLab, sample_release

REPO = Path(__file__).resolve().parent.parent

Cli = Callable[..., subprocess.CompletedProcess[str]]
Write = Callable[[str, str], Path]

DEPLOY = """\
name: deploy
targets: web
params:
  version: {type: str, required: true, pattern: '^[0-9A-Za-z._-]+$'}
  token:   {type: str, secret: true, env: RBX_CLI_TOKEN}
strategy:
  batches: [1, "50%", "100%"]
  between_batches:
    - approve: "Canary healthy?"
steps:
  - name: Upload
    upload: {src: files/app.tgz, dest: "{{ lab_root }}/app-{{ version }}.tgz"}
  - name: Unpack
    shell: tar -C {{ lab_root | quote }} -xzf {{ lab_root | quote }}/app-{{ version | quote }}.tgz
  - name: Tell
    command: [echo, "{{ token }}"]
"""


def test_misspelled_step_key_names_file_and_line(cli: Cli, write: Write) -> None:
    path = write("runbooks/deploy.yml", DEPLOY.replace("    shell: tar", "    shel: tar"))
    done = cli("check", path)
    assert done.returncode == 2
    assert f"{path}:14: steps[1] (Unpack): unknown key 'shel'; did you mean 'shell'?" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_good_runbook_checks_clean(cli: Cli, write: Write, lab: SshLab) -> None:
    path = write("runbooks/deploy.yml", DEPLOY)
    write("files/app.tgz", "x")
    done = cli("check", path, "-i", lab.inventory, "-e", "version=1.0")
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout and "6 hosts in 3 batches (1, 3, 2)" in done.stdout


def test_check_reports_every_problem_at_once(cli: Cli, write: Write, lab: SshLab) -> None:
    path = write("runbooks/deploy.yml", DEPLOY.replace("targets: web", "targets: web:&nowhere"))
    done = cli("check", path, "-i", lab.inventory, "-e", "version=1 0", "-e", "colour=red")
    assert done.returncode == 2
    assert "params.version: '1 0' (from -e) does not match pattern" in done.stderr
    assert "-e colour: 'colour' is not a parameter of this runbook" in done.stderr
    assert "host pattern 'web:&nowhere' matches no hosts" in done.stderr
    assert f"{path}:12: steps[0] (Upload).upload.src: file not found: files/app.tgz" in done.stderr
    assert "4 problems; nothing was run." in done.stderr


def test_check_finds_undefined_names_per_host(cli: Cli, write: Write, lab: SshLab) -> None:
    path = write("runbooks/deploy.yml", DEPLOY.replace("{{ lab_root }}/app", "{{ app_root }}/app"))
    write("files/app.tgz", "x")
    done = cli("check", path, "-i", lab.inventory, "-e", "version=1")
    assert done.returncode == 2
    assert "steps[0] (Upload).upload.dest: 'app_root' is undefined (on 6 of 6 hosts" in done.stderr


def test_check_runs_ansible_syntax_check_on_playbooks(cli: Cli, write: Write) -> None:
    write(
        "playbooks/broken.yml",
        "- hosts: all\n  tasks:\n    - name: x\n      bogus_module_xyz: {}\n",
    )
    path = write(
        "runbooks/pb.yml", "name: pb\ntargets: all\nsteps:\n  - playbook: playbooks/broken.yml\n"
    )
    done = cli("check", path)
    assert done.returncode == 2
    assert f"{path}:4: steps[0].playbook: playbook syntax:" in done.stderr
    assert "bogus_module_xyz" in done.stderr


def test_plan_splits_six_hosts_one_three_two_in_inventory_order(
    cli: Cli, write: Write, lab: SshLab
) -> None:
    path = write("runbooks/deploy.yml", DEPLOY)
    done = cli(
        "plan",
        path,
        "-i",
        lab.inventory,
        "-e",
        "version=1.0",
        "--json",
        env={"RBX_CLI_TOKEN": "s3cr3t-value"},
    )
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["batches"] == [["web1"], ["web2", "web3", "web4"], ["web5", "web6"]]
    assert plan["gates"] == [
        {"after_batch": 1, "approve": "Canary healthy?"},
        {"after_batch": 2, "approve": "Canary healthy?"},
    ]
    assert plan["params"] == {"version": "1.0", "token": "********"}
    assert "s3cr3t-value" not in done.stdout + done.stderr
    unpack = plan["steps"][1]["actions"]
    assert unpack[0]["hosts"] == ["web1"]
    assert unpack[0]["action"]["shell"] == (
        f"tar -C {lab.host('web1').root} -xzf {lab.host('web1').root}/app-1.0.tgz"
    )


def test_plan_is_the_same_every_time(cli: Cli, write: Write, lab: SshLab) -> None:
    path = write("runbooks/deploy.yml", DEPLOY)
    first = cli("plan", path, "-i", lab.inventory, "-e", "version=1.0", "--json")
    second = cli("plan", path, "-i", lab.inventory, "-e", "version=1.0", "--json")
    assert first.returncode == 0 and first.stdout == second.stdout


def test_plan_text_is_readable_and_limit_narrows(cli: Cli, write: Write, lab: SshLab) -> None:
    path = write("runbooks/deploy.yml", DEPLOY)
    done = cli(
        "plan",
        path,
        "-i",
        lab.inventory,
        "-e",
        "version=1.0",
        "--limit",
        "dc2",
        env={"RBX_CLI_TOKEN": "s3cr3t-value"},
    )
    assert done.returncode == 0, done.stderr
    assert "targets web --limit dc2: 3 hosts in 3 batches" in done.stdout
    assert "1. 1 host: web4" in done.stdout and "then approval: Canary healthy?" in done.stdout
    assert "$ echo '********'" in done.stdout
    assert "s3cr3t-value" not in done.stdout


def test_plan_needs_an_inventory(cli: Cli, write: Write) -> None:
    done = cli("plan", write("rb.yml", DEPLOY), "-e", "version=1")
    assert done.returncode == 2 and "plan needs an inventory: give -i INVENTORY" in done.stderr


def test_missing_runbook_file_is_bad_input(cli: Cli) -> None:
    done = cli("check", "nope.yml")
    assert done.returncode == 2 and "nope.yml: file not found" in done.stderr


def test_unknown_option_is_a_usage_error(cli: Cli) -> None:
    done = cli("plan", "x.yml", "--frobnicate")
    assert done.returncode == 2 and "--frobnicate" in done.stderr


def test_help_teaches_commands_and_global_options(cli: Cli) -> None:
    top = cli("--help")
    assert top.returncode == 0 and "check" in top.stdout and "plan" in top.stdout
    plan_help = cli("plan", "--help").stdout
    assert "--db" in plan_help and "RUNBOOK_EXEC_DB" in plan_help and "Example:" in plan_help
    # Plain metavars and whole paragraphs: no Python types, no line broken mid-sentence.
    for command in ("run", "resume", "rollback", "runs", "show", "audit verify"):
        shown = cli(*command.split(), "--help").stdout
        for typed in ("<bool>", "<int", "<path>", "<str>", "{RUNBOOK}", "{RUN_ID}"):
            assert typed not in shown, (command, typed)
    run_help = cli("run", "--help", env={"COLUMNS": "200"}).stdout
    assert "The run locks each of its hosts (and its runbook's lock: name), all or none;" in (
        run_help
    )
    assert cli("-V").stdout.startswith("runbook-exec ")


def test_module_entry_point_and_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runbook_exec", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.startswith("runbook-exec ")


def test_an_unreachable_database_is_named_without_its_password(cli: Cli) -> None:
    done = cli("runs", "--db", "postgresql://ops:s3cret-pw@127.0.0.1:1/history")
    assert done.returncode == 4
    assert "cannot reach the state store postgresql+psycopg://ops:***@127.0.0.1:1/history" in (
        done.stderr
    )
    assert "s3cret-pw" not in done.stdout + done.stderr


def test_the_readmes_check_and_plan_run_as_written_on_the_shipped_folders(
    cli: Cli, tmp_path: Path
) -> None:
    """The first commands a new user copies: in a folder with the shipped runbooks,
    playbooks and inventory, and a release in dist/, they work as the README prints them."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## What a user does", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = [
        ln
        for ln in block.splitlines()
        if ln.startswith(("runbook-exec check", "runbook-exec plan"))
    ]
    assert len(lines) == 2, block
    for name in ("runbooks", "playbooks", "inventory"):
        shutil.copytree(REPO / name, tmp_path / name)
    (tmp_path / "dist").mkdir()
    shutil.copy(sample_release(tmp_path / "build", "1.4.2"), tmp_path / "dist" / "app-1.4.2.tar.gz")
    for line in lines:
        done = cli(*shlex.split(line)[1:])
        assert done.returncode == 0, line + "\n" + done.stdout + done.stderr
    assert "web3.example.com" in cli(*shlex.split(lines[1])[1:]).stdout


def test_state_lives_in_one_private_place_and_settings_come_from_a_file(
    cli: Cli, tmp_path: Path
) -> None:
    home = {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    work = tmp_path / "work"
    work.mkdir()
    assert cli("runs", env=home, cwd=work).returncode == 0
    store = tmp_path / "state" / "runbook-exec" / "state.db"
    assert store.stat().st_mode & 0o777 == 0o600
    assert store.parent.stat().st_mode & 0o777 == 0o700
    missing = cli("show", "nope", env=home, cwd=tmp_path)  # from another folder: same store
    assert missing.returncode == 2 and f"in the state store {store}" in missing.stderr
    # A workspace that has its own store keeps it.
    (work / ".runbook-exec").mkdir()
    cli("runs", "--db", f"sqlite:///{work / '.runbook-exec' / 'state.db'}", env=home, cwd=work)
    pinned = cli("show", "nope", env=home, cwd=work)
    assert "in the state store .runbook-exec/state.db" in pinned.stderr

    (work / "hosts.ini").write_text("h1 ansible_host=127.0.0.1 ansible_port=1\n")
    (work / "rb.yml").write_text("name: x\ntargets: all\nsteps:\n  - shell: 'true'\n")
    (tmp_path / "cfg" / "runbook-exec").mkdir(parents=True)
    (tmp_path / "cfg" / "runbook-exec" / "config.toml").write_text('operator = "from-home"\n')
    (work / "runbook-exec.toml").write_text('inventory = "hosts.ini"\noperator = "from-work"\n')
    planned = cli("plan", "rb.yml", "--json", env=home, cwd=work)  # no -i: the file's
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["hosts"] == 1
    (work / "runbook-exec.toml").write_text("inventory = 'hosts.ini'\nfork = 3\n")
    bad = cli("plan", "rb.yml", env=home, cwd=work)
    assert bad.returncode == 2 and "runbook-exec.toml: fork: unknown setting" in bad.stderr


def test_a_wheel_from_a_copy_of_the_tree_writes_nothing_there_and_init_makes_a_workspace(
    tmp_path: Path,
) -> None:
    """`pip install .` from a read-only tree: the build writes nothing into it; the wheel
    carries the examples, and `init` makes a workspace that `plan` works in."""
    tree = tmp_path / "tree"
    skip = shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", "*.egg-info", ".runbook-exec", "build", "dist", ".*cache"
    )
    shutil.copytree(REPO, tree, ignore=skip)
    before = sorted(str(p) for p in tree.rglob("*"))
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(tree),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    assert sorted(str(p) for p in tree.rglob("*")) == before  # nothing written into the tree
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # The dependencies are this environment's (not its editable copy of runbook-exec).
    ours = next(Path(p) for p in sys.path if p.endswith("site-packages"))
    (next(venv.glob("lib/python*/site-packages")) / "deps.pth").write_text(f"{ours}\n")
    (wheel,) = wheels.glob("runbook_exec-*.whl")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    tool = str(venv / "bin" / "runbook-exec")
    env = {**os.environ, "RUNBOOK_EXEC_NO_WARM": "1", "XDG_STATE_HOME": str(tmp_path / "state")}
    made = subprocess.run(
        [tool, "init", "site"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "site" / "runbooks" / "deploy.yml").is_file()
    planned = subprocess.run(
        [tool, "plan", "runbooks/restart.yml"],
        cwd=tmp_path / "site",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "web1.example.com" in planned.stdout
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import runbook_exec; print(runbook_exec.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(venv) in where.stdout  # the wheel's copy ran, not the source tree
