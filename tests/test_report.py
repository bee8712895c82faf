"""The handover report on real hosts: a change whose gray release was approved by someone
else, then a bad release whose canary failed and was rolled back; a handover item ticked.
The report for the change says what changed where, who approved, what failed, how to roll
back and where the checklist stands, in JSON, Markdown and HTML (English and Chinese); it
verifies against the store and against an export, and an edited one does not."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runbook_exec.testing.lab import SshLab, sample_release

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHANGE = "CHG-7"


@dataclass
class Scene:
    """The change, made once for the module: its runs, its store and a way to ask it."""

    base: Path
    db: Path
    good: str
    bad: str
    hosts: SshLab

    def __call__(
        self,
        command: str,
        *args: str | Path,
        db: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`runbook-exec` on the scene's store (or `db`), in its folder."""
        extra: list[str | Path] = ["--db", f"sqlite:///{db or self.db}"]
        if command == "run":
            extra += self.hosts.cli_args()
        return subprocess.run(
            [str(BIN / "runbook-exec"), command, *map(str, args), *map(str, extra)],
            capture_output=True,
            text=True,
            cwd=self.base,
            timeout=120,
            env={
                **os.environ,
                "COLUMNS": "200",
                "XDG_STATE_HOME": str(self.base / ".state"),
                **(env or {}),
            },
        )

    def copy(self, name: str) -> Path:
        """A copy of the store, to change by hand."""
        target = self.base / name
        with sqlite3.connect(self.db) as source, sqlite3.connect(target) as copy:
            source.backup(copy)
        return target


def gray(scene: Scene, version: str, healthy: bool = True) -> str:
    """Start a gray release of `version` for the change, as alice; its run id."""
    artifact = sample_release(scene.base / "artifacts", version, healthy=healthy)
    done = scene(
        "run", "runbooks/gray-release.yml", "-e", f"version={version}", "-e",
        f"artifact={artifact}", "-e", "bake_time=0s", "--change-id", CHANGE, "-m",
        f"release {version}", "--operator", "alice", "--no-input", "--json",
    )  # fmt: skip
    assert done.returncode in (1, 3), done.stdout + done.stderr
    return str(json.loads(done.stdout)["run_id"])


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    """Four hosts in group `web` with the shipped runbooks. 1.0.0 goes everywhere, each
    batch approved by bob; then a bad 2.0.0 whose canary fails and is rolled back; carol
    ticks one handover item."""
    base = tmp_path_factory.mktemp("report")
    with SshLab() as hosts:
        hosts.start(4, groups={"web": ["host1", "host2", "host3", "host4"]})
        shutil.copytree(REPO / "runbooks", base / "runbooks")
        shutil.copytree(REPO / "playbooks", base / "playbooks")
        inventory = base / "inventory"
        inventory.mkdir()
        shutil.copy(hosts.inventory, inventory / "hosts.ini")
        shutil.copytree(REPO / "inventory" / "group_vars", inventory / "group_vars")
        hosts.inventory = inventory
        scene = Scene(base, base / "state.db", "", "", hosts)
        scene.good = gray(scene, "1.0.0")
        for comment in ("canary fine", "quarter fine"):
            approved = scene("approve", scene.good, "-m", comment, "--operator", "bob")
            # When the canary did not come up, say why (its steps, as the record has them).
            assert approved.returncode == 0, approved.stderr + scene("show", scene.good).stdout
            resumed = scene("resume", scene.good, "--no-input", "--operator", "alice")
            assert resumed.returncode in (0, 3), resumed.stdout + resumed.stderr
        assert resumed.returncode == 0
        scene.bad = gray(scene, "2.0.0", healthy=False)
        ticked = scene(
            "handover", "tick", scene.bad, "2", "-m", "restored last night's dump",
            "--operator", "carol",
        )  # fmt: skip
        assert ticked.returncode == 0, ticked.stderr
        assert "ticked by carol: Backup verified" in ticked.stdout
        yield scene


def report(scene: Scene, *args: str | Path, db: Path | None = None) -> str:
    done = scene("report", *args, db=db)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_report_of_a_change_says_what_changed_who_approved_and_the_way_back(
    scene: Scene, tmp_path: Path
) -> None:
    facts = json.loads(report(scene, "--change-id", CHANGE, "-f", "json"))["facts"]
    assert [r["id"] for r in facts["runs"]] == [scene.good, scene.bad]
    assert [r["operator"] for r in facts["runs"]] == ["alice", "alice"]
    hosts = {h["host"]: h for h in facts["hosts"]}
    assert hosts["host1"]["releases"][0]["path"] == [None, "1.0.0", "2.0.0", "1.0.0"]
    assert hosts["host1"]["outcome"] == "rolled_back"
    for name in ("host2", "host3", "host4"):
        (release,) = hosts[name]["releases"]
        assert (release["before"], release["after"], hosts[name]["outcome"]) == (
            None, "1.0.0", "ok",
        )  # fmt: skip
    assert [(a["by"], a["comment"], a["status"]) for a in facts["approvals"]] == [
        ("bob", "canary fine", "approved"),
        ("bob", "quarter fine", "approved"),
    ]
    (failure,) = facts["failures"]
    assert (failure["run"], failure["host"], failure["name"]) == (scene.bad, "host1", "Health")
    assert [(r["run"], r["host"], r["status"]) for r in facts["rollbacks"]] == [
        (scene.bad, "host1", "rolled_back")
    ]
    # The bad release put host1 back itself: only the good one is left to undo.
    assert facts["way_back"] == [
        {
            "run": scene.good,
            "command": f"runbook-exec rollback {scene.good}",
            "undone_by": None,
            "hosts": ["host1", "host2", "host3", "host4"],
        }
    ]
    assert {(r["host"], r["version"]) for r in facts["live"]} == {
        (f"host{i}", "1.0.0") for i in range(1, 5)
    }
    declared = {i["item"]: i["ticked"] for i in facts["checklist"]["declared"]}
    assert list(declared) == [
        "Dashboards and alerts show the new version",
        "Backup verified",
        "Operations know the rollback command",
    ]
    assert declared["Backup verified"]["by"] == "carol"
    assert declared["Dashboards and alerts show the new version"] is None
    checked = {c["check"]: c["ok"] for c in facts["checklist"]["checked"]}
    assert checked == {"hosts_healthy": True, "chain_verified": True, "checkpoint_taken": False}
    # Secrets stay masked and the runbook is there whole, with its digest.
    run = facts["runs"][0]
    assert "targets: web" in run["runbook"]["text"] and len(run["runbook"]["sha256"]) == 64
    commands = [c for c in facts["commands"] if c["run"] == scene.good]
    assert any("mkdir -p" in g["text"] for c in commands for g in c["groups"]), commands[:2]
    # A checkpoint after the changes ticks the tool's own item.
    copy = scene.copy("checkpointed.db")
    assert scene("audit", "checkpoint", db=copy).returncode == 0
    again = json.loads(report(scene, "--change-id", CHANGE, "-f", "json", db=copy))
    assert {c["check"]: c["ok"] for c in again["facts"]["checklist"]["checked"]} == {
        "hosts_healthy": True, "chain_verified": True, "checkpoint_taken": True,
    }  # fmt: skip


def test_every_format_verifies_and_an_edited_report_does_not(scene: Scene, tmp_path: Path) -> None:
    html = tmp_path / "chg.html"
    report(scene, "--change-id", CHANGE, "--lang", "zh", "-o", str(html))
    text = html.read_text()
    for label in ("交接清单", "回滚方式", "变更记录"):
        assert label in text
    assert (
        "<script src" not in text
        and "<link" not in text
        and "http://" not in text.split("<script", 1)[0].split("<style>", 1)[0]
    )
    markdown = tmp_path / "chg.md"
    report(scene, "--change-id", CHANGE, "-f", "md", "-o", str(markdown))
    one_run = tmp_path / "run.json"
    report(scene, scene.bad, "-f", "json", "-o", str(one_run))
    trail = tmp_path / "trail.jsonl"
    exported = scene("audit", "export")
    assert exported.returncode == 0
    trail.write_text(exported.stdout)
    for path in (html, markdown, one_run):
        ok = scene("audit", "verify", "--report", str(path))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "report OK" in ok.stdout
        from_export = scene("audit", "verify", "--report", str(path), "--file", str(trail))
        assert from_export.returncode == 0, from_export.stdout + from_export.stderr

    # A version in the summary, changed in the text only.
    edited = tmp_path / "edited.html"
    edited.write_text(text.replace("<td>∅ → 1.0.0</td>", "<td>∅ → 1.0.1</td>", 1))
    assert edited.read_text() != text
    done = scene("audit", "verify", "--report", str(edited))
    assert done.returncode == 1
    assert "report NOT verified" in done.stdout and "the text was changed" in done.stdout
    assert "1.0.1" in done.stdout

    # The same number changed in the embedded facts too: the chain says otherwise.
    data = json.loads(one_run.read_text())
    data["facts"]["hosts"][0]["releases"][0]["after"] = "2.0.0"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    done = scene("audit", "verify", "--report", str(forged))
    assert done.returncode == 1
    assert "a fact differs from the chain: hosts[0].releases[0].after is '2.0.0'" in done.stdout

    # A report of another store's chain, or of nothing, is refused by name.
    garbage = tmp_path / "garbage.html"
    garbage.write_text("<html>hello</html>")
    done = scene("audit", "verify", "--report", str(garbage))
    assert done.returncode == 2 and "not a runbook-exec report" in done.stderr


def test_an_edited_database_shows_in_the_report_and_fails_its_verification(
    scene: Scene, tmp_path: Path
) -> None:
    from helpers import query

    edited = scene.copy("edited.db")
    query(
        f"sqlite:///{edited}", "UPDATE runs SET operator = 'mallory' WHERE id = :id", id=scene.good
    )
    path = tmp_path / "r.md"
    report(scene, "--change-id", CHANGE, "-f", "md", "-o", str(path), db=edited)
    text = path.read_text()
    assert "NOT VERIFIED" in text and "mallory" in text  # the difference, flagged
    assert "| alice (" in text  # what the events say is what is reported
    done = scene("audit", "verify", "--report", str(path), db=edited)
    assert done.returncode == 1
    assert "made from a record that did not verify" in done.stdout


def test_bad_requests_are_refused_and_record_nothing(scene: Scene) -> None:
    empty = scene.base / "empty.db"
    for args, says in (
        ((), "give one of"),
        (("--change-id", "NOPE"), "no run of change 'NOPE'"),
        (("20990101-000000-abcdef",), "no run '20990101-000000-abcdef'"),
        (("--since", "yesterday"), "'yesterday' is not a date or time"),
        (("--change-id", "X", "-f", "pdf"), "'pdf': one of html, md, json"),
        (("--change-id", "X", "--lang", "fr"), "'fr': one of en, zh"),
    ):
        done = scene("report", *args, db=empty)
        assert done.returncode == 2
        assert says in done.stderr, (args, done.stderr)
    assert "report.made" not in scene("audit", "export", db=empty).stdout


def test_ticking_an_item_the_runbook_does_not_declare_is_refused(scene: Scene) -> None:
    done = scene("handover", "tick", scene.good, "Coffee made")
    assert done.returncode == 2
    assert "'Coffee made' is not one of" in done.stderr and "2. Backup verified" in done.stderr
    listed = scene("handover", "list", scene.bad)
    assert re.search(r"2\. ☑ Backup verified: ticked by carol at \S+Z — restored", listed.stdout)
    assert "1. ☐ Dashboards and alerts show the new version: open" in listed.stdout


def test_the_html_report_reads_and_prints_in_a_real_browser(scene: Scene, tmp_path: Path) -> None:
    """Opened from the file with nothing fetched from anywhere, the Chinese report shows its
    sections and the summary of every host, and prints on A4."""
    import os

    from helpers import chromium_browser

    path = tmp_path / "chg.html"
    report(scene, "--change-id", CHANGE, "--lang", "zh", "-o", str(path))
    fetched: list[str] = []
    with chromium_browser() as browser:
        page = browser.new_page(viewport={"width": 1000, "height": 1300})
        page.on("request", lambda request: fetched.append(request.url))
        page.goto(path.as_uri())
        assert page.locator("h1").inner_text() == "交接清单与变更报告"
        headings = page.locator("h2").all_inner_texts()
        assert headings[:3] == ["摘要", "申请人与原因", "审批"]
        assert {"回滚方式", "交接清单", "变更记录"} <= set(headings)
        summary = page.locator("table").first.locator("tbody tr")
        assert summary.count() == 4
        assert "∅ → 1.0.0 → 2.0.0 → 1.0.0" in summary.first.inner_text()
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=False)
        pdf = page.pdf(format="A4")
    assert fetched == [path.as_uri()]
    pages = re.findall(rb"/MediaBox \[0 0 (\d+(?:\.\d+)?) (\d+(?:\.\d+)?)\]", pdf)
    assert pages and all(
        round(float(w)) in (595, 596) and round(float(h)) in (842, 843) for w, h in pages
    )
    assert shot.stat().st_size > 10_000
    if os.environ.get("RBX_DOCS_SCREENSHOTS"):  # how docs/report.png is made
        shutil.copyfile(shot, REPO / "docs" / "report.png")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_report_from_a_postgresql_store_verifies(
    runbook_exec: Callable[..., subprocess.CompletedProcess[str]],
    write: Callable[..., Path],
    tmp_path: Path,
) -> None:
    runbook = write("rb.yml", "name: pg\ntargets: app\nsteps:\n  - shell: echo hi\n")
    done = runbook_exec("run", runbook, "--change-id", "CHG-PG")
    assert done.returncode == 0, done.stdout + done.stderr
    path = tmp_path / "pg.md"
    made = runbook_exec("report", "--change-id", "CHG-PG", "-f", "md", "-o", path)
    assert made.returncode == 0, made.stderr
    assert "| host1 |  | not changed |" in path.read_text()
    checked = runbook_exec("audit", "verify", "--report", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    missing = runbook_exec("report", "--change-id", "CHG-NONE")
    assert missing.returncode == 2 and "in the state store" in missing.stderr


def test_names_from_the_record_never_become_markup(scene: Scene, tmp_path: Path) -> None:
    """A comment (or host, runbook, change id) is the record's text, never markup: not HTML
    or an image in a Markdown ticket or wiki, not a new row, heading or quote, not out of
    the HTML's embedded data; and a report holding a CR still verifies."""
    store = scene.copy("hostile.db")
    hostile = (
        "ok\r\r## All approved ![t](http://evil.example/t.png) \\`<img src=x onerror=alert(1)>`"
        " | </script><script>alert(2)</script>\n> **ALL CHECKS PASSED**"
    )
    ticked = scene("handover", "tick", scene.bad, "1", "-m", hostile, db=store)
    assert ticked.returncode == 0, ticked.stderr
    for fmt in ("md", "html"):
        path = tmp_path / f"hostile.{fmt}"
        report(scene, scene.bad, "-f", fmt, "-o", path, db=store)
        text = path.read_bytes().decode()
        body = text.split("<!-- runbook-exec-report:")[0].split('<script type="application/json"')[
            0
        ]
        assert "<img" not in body and "<script>" not in body
        assert fmt == "html" or "](http" not in body
        lines = body.replace("\r", "\n").splitlines()
        assert fmt == "html" or not any(line.startswith(("## All", "> **ALL")) for line in lines)
        checked = scene("audit", "verify", "--report", path, db=store)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    markdown = (tmp_path / "hostile.md").read_text()
    assert "\\!\\[t\\]\\(http://evil.example/t.png\\)" in markdown
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;" in markdown
    page = (tmp_path / "hostile.html").read_text()
    assert page.count("<script") == 1 and "\\u003c/script\\u003e" in page


def test_a_forged_document_never_verifies(scene: Scene, tmp_path: Path) -> None:
    """Only the chain speaks: keys added or moved, observations made up, line endings
    changed, record problems dropped, or data that does not parse — each is refused."""
    import base64

    from runbook_exec.report.render import render

    original = tmp_path / "r.json"
    report(scene, scene.bad, "-f", "json", "-o", original)
    data = json.loads(original.read_text())

    def refused(name: str, text: str, says: str, db: Path | None = None, code: int = 1) -> None:
        path = tmp_path / name
        path.write_bytes(text.encode())
        done = scene("audit", "verify", "--report", path, db=db)
        assert done.returncode == code, (name, done.stdout, done.stderr)
        assert says in done.stdout + done.stderr, (name, done.stdout, done.stderr)

    dump = lambda d: json.dumps(d, indent=2, ensure_ascii=False) + "\n"  # noqa: E731
    refused("extra.json", dump({**data, "approved_by": "CAB"}), "the text was changed")
    refused("moved.json", dump(dict(reversed(list(data.items())))), "the text was changed")
    refused(
        "observed.json",
        dump({**data, "observed": {"rows": [], "drift": []}}),
        "not what event",
    )
    markdown = tmp_path / "r.md"
    report(scene, scene.bad, "-f", "md", "-o", markdown)
    refused("crlf.md", markdown.read_text().replace("\n", "\r\n"), "the text was changed")
    malformed = {**data, "facts": {**data["facts"], "selection": []}}
    refused("malformed.json", dump(malformed), "its data is malformed", code=2)

    # A report from an edited store says NOT VERIFIED; dropping that does not help.
    from helpers import query

    edited = scene.copy("edited-2.db")
    query(f"sqlite:///{edited}", "UPDATE runs SET operator = 'x' WHERE id = :id", id=scene.bad)
    flagged = tmp_path / "flagged.md"
    report(scene, scene.bad, "-f", "md", "-o", flagged, db=edited)
    packed = flagged.read_text().rsplit("<!-- runbook-exec-report:", 1)[1].split("-->")[0]
    document = json.loads(base64.b64decode(packed))
    assert document["problems"]
    clean = render({**document, "problems": []})
    assert "NOT VERIFIED" not in clean
    refused("clean.md", clean, "not those event", db=edited)

    # Without the audit key, nothing can be said either way: exit 4, as for the chain.
    trail = tmp_path / "trail.jsonl"
    trail.write_text(scene("audit", "export").stdout)
    keyless = scene(
        "audit", "verify", "--report", original, "--file", trail,
        env={"XDG_CONFIG_HOME": str(tmp_path / "no-keys")},
    )  # fmt: skip
    assert keyless.returncode == 4, keyless.stdout + keyless.stderr


def test_odd_arguments_are_refused_and_record_nothing(scene: Scene, tmp_path: Path) -> None:
    store = scene.copy("odd.db")
    events = lambda: scene("audit", "export", db=store).stdout.count("report.made")  # noqa: E731
    before = events()
    nowhere = scene("report", scene.bad, "-o", tmp_path / "no" / "such" / "r.html", db=store)
    assert nowhere.returncode == 2 and "its folder does not exist" in nowhere.stderr
    assert events() == before
    sup = scene("handover", "tick", scene.bad, "²", db=store)
    assert sup.returncode == 2 and "is not one of" in sup.stderr
