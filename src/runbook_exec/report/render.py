"""A report document (facts, format, language, what was observed) as text: HTML (one
self-contained file, inline CSS, prints on A4), Markdown, or JSON. The document itself is
embedded in the HTML and Markdown, so `audit verify --report` can rebuild the facts from
the chain, render them again and compare every character.

Both text formats are written from one list of blocks, so they say the same things.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..steps.analysis import measurement_value
from .labels import LANGUAGES

FORMATS = ("html", "md", "json")
KIND = "runbook-exec handover report"
MD_MARK = "<!-- runbook-exec-report:"
HTML_MARK = '<script type="application/json" id="runbook-exec-report">'

Block = tuple[Any, ...]


def render(document: Mapping[str, Any]) -> str:
    """The document as text in its own format."""
    fmt = document["format"]
    if fmt == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    labels = LANGUAGES[document["lang"]]
    if fmt == "md":
        return _markdown(_blocks(document, labels, md_plain)) + _md_embed(document)
    return _html(_blocks(document, labels, html_plain), document)


def embedded(text: str) -> dict[str, Any] | None:
    """The document a rendered report carries (None if it carries none that parses)."""
    try:
        if text.lstrip().startswith("{"):
            data = json.loads(text)
        elif MD_MARK in text:
            encoded = text.rsplit(MD_MARK, 1)[1].split("-->", 1)[0].strip()
            data = json.loads(base64.b64decode(encoded, validate=True))
        elif HTML_MARK in text:
            data = json.loads(text.split(HTML_MARK, 1)[1].split("</script>", 1)[0])
        else:
            return None
    except (ValueError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("report") != KIND:
        return None
    return data


# --- what a report says, in order -----------------------------------------------------------


def _blocks(
    document: Mapping[str, Any], t: Mapping[str, str], e: Callable[[Any], str]
) -> list[Block]:
    """The report as blocks. Every value from the record goes through `e`, which makes it
    plain text in the output format (Markdown: no markup, no line breaks); the labels are
    ours."""
    facts = document["facts"]
    chain = facts["chain"]
    made = facts["made"]

    def status(value: str | None) -> str:
        return e(_status(value, t))

    blocks: list[Block] = [("h1", t["title"])]
    blocks.append(("p", f"{t['covers']}: {e(_selection(facts['selection']))}"))
    blocks.append(
        (
            "p",
            t["made"].format(
                by=e(made["by"]),
                at=e(made["at"]),
                first=facts["events"]["first"],
                last=facts["events"]["last"],
                event=made["event"],
                hash=e(chain["head"]["hash"]),
            ),
        )
    )
    if document.get("problems") or not chain["verified"]:
        blocks.append(("alert", t["not_verified"]))
    blocks.append(("note", t["verify"]))

    blocks.append(("h2", t["summary"]))
    rows = []
    for host in facts["hosts"]:
        outcome = status(host["outcome"]) + (f" ({e(host['message'])})" if host["message"] else "")
        if not host["releases"]:
            rows.append([e(host["host"]), "", t["not_changed"], "", outcome])
        for release in host["releases"]:
            path = " → ".join(e(v or "∅") for v in release["path"])
            if release["before"] == release["after"]:
                path += f" ({t['not_changed']})"
            rows.append([e(host["host"]), e(release["root"]), path, e(release["at"]), outcome])
    blocks.append(
        ("table", [t["host"], t["release"], t["before_after"], t["when"], t["outcome"]], rows)
    )

    blocks.append(("h2", t["who"]))
    rows = [
        [
            e(run["id"]),
            f"{e(run['runbook']['name'])} ({e(run['runbook']['sha256'][:12])})",
            f"{e(run['operator'])} ({e(run['os_user'])}@{e(run['machine'])})",
            e(run["change_id"] or ""),
            e(run["reason"] or ""),
            status(run["status"]) + (f": {e(run['message'])}" if run["message"] else ""),
            e(run["requested_at"]),
            e(run["finished_at"] or ""),
        ]
        for run in facts["runs"]
    ]
    headers = [t["run"], t["runbook"], t["requested_by"], t["change"], t["reason"], t["status"]]
    blocks.append(("table", [*headers, t["started"], t["ended"]], rows))

    blocks.append(("h2", t["approvals"]))
    rows = [
        [
            e(a["run"]),
            e(a["message"] or a["gate"]),
            status(a["status"]),
            e(a["by"] or ""),
            e(a["comment"] or ""),
            e(a["at"] or ""),
        ]
        for a in facts["approvals"]
    ]
    headers = [t["run"], t["gate"], t["status"], t["by"], t["comment"], t["when"]]
    blocks.append(("table", headers, rows) if rows else ("p", t["none"]))

    if "analyses" in facts:
        blocks.append(("h2", t["analyses"]))
        rows = [
            [
                e(a["run"]),
                str(a["batch"]),
                e(a["step"]) + (" (baseline)" if a["number"] == 0 else f" #{a['number']}"),
                e(measurement_value(a["value"])),
                status(a["verdict"]) + (f" ({e(a['message'])})" if a["message"] else ""),
                e(a["query"]),
                e(a["at"] or ""),
            ]
            for a in facts["analyses"]
        ]
        headers = [t["run"], t["batch"], t["step"], t["value"], t["verdict"], t["query"]]
        blocks.append(("table", [*headers, t["when"]], rows))

    blocks.append(("h2", t["failures"]))
    rows = [
        [
            e(f["run"]),
            e(f["host"]),
            f"{e(f['section'])} {f['step']}: {e(f['name'])}",
            status(f["status"]),
            e(f["message"]),
            e(f["at"] or ""),
        ]
        for f in facts["failures"]
    ]
    headers = [t["run"], t["host"], t["step"], t["status"], t["message"], t["when"]]
    blocks.append(("table", headers, rows) if rows else ("p", t["none"]))

    blocks.append(("h2", t["rollbacks"]))
    items = []
    for r in facts["rollbacks"]:
        if r["host"] is None:
            items.append(
                t["rolled_back_run"].format(
                    run=e(r["run"]), of=e(r["of"]), status=status(r["status"])
                )
            )
        else:
            said = f" ({e(r['message'])})" if r.get("message") else ""
            items.append(f"{e(r['host'])}: {status(r['status'])}{said} — {t['run']} {e(r['run'])}")
    blocks.append(("list", items) if items else ("p", t["none"]))

    blocks.append(("h2", t["rollback"]))
    items = []
    for way in facts["way_back"]:
        if way["undone_by"]:
            items.append(t["rollback_done"].format(run=e(way["run"]), by=e(way["undone_by"])))
        else:
            hosts = ", ".join(e(h) for h in way["hosts"])
            items.append(t["rollback_cmd"].format(command=e(way["command"]), hosts=hosts))
    blocks.append(("list", items) if items else ("p", t["rollback_none"]))

    blocks.append(("h2", t["checklist"]))
    rows = []
    for item in facts["checklist"]["declared"]:
        tick = item["ticked"]
        done = t["ticked"].format(by=e(tick["by"]), at=e(tick["at"])) if tick else t["open"]
        comment = e((tick or {}).get("comment") or "")
        rows.append([("☑ " if tick else "☐ ") + e(item["item"]), done, comment])
    for check in facts["checklist"]["checked"]:
        mark = "☑ " if check["ok"] else "☒ "
        rows.append([mark + t[check["check"]], t["checked_by_tool"], e(check["detail"])])
    observed = document.get("observed")
    if observed is None:
        rows.append(["☐ " + t["no_drift"], t["checked_by_tool"], t["not_checked"]])
    else:
        drift = observed.get("drift") or []
        mark = "☒ " if drift else "☑ "
        rows.append([mark + t["no_drift"], t["observed"], ", ".join(e(h) for h in drift)])
    blocks.append(("table", [t["item"], t["done"], t["comment"]], rows))

    blocks.append(("h2", t["state"]))
    rows = [
        [e(r["host"]), e(r["root"]), e(r["version"]), e(r["since"]), e(r["run"])]
        for r in facts["live"]
    ]
    headers = [t["host"], t["release"], t["live"], t["since"], t["run"]]
    blocks.append(("table", headers, rows) if rows else ("p", t["none"]))
    if observed is not None:
        rows = [
            [e(r["host"]), e(r["root"]), e(r["recorded"] or ""), e(r["found"] or ""), e(r["state"])]
            for r in observed["rows"]
        ]
        blocks.append(("h3", t["observed"]))
        blocks.append(
            ("table", [t["host"], t["release"], t["live"], t["drift"], t["status"]], rows)
        )

    blocks.append(("h2", t["changes"]))
    for run in facts["runs"]:
        blocks.append(("h3", f"{t['run']} {e(run['id'])} — {e(run['runbook']['name'])}"))
        params = [[e(k), e(_value(v))] for k, v in run["params"].items()]
        if params:
            blocks.append(("h4", t["params"]))
            blocks.append(("table", ["", ""], params))
        blocks.append(("h4", t["inventory"]))
        rows = [
            [
                e(host),
                e(c.get("address") or ""),
                e(c.get("port") or ""),
                e(c.get("user") or ""),
                t["yes"] if c.get("become") else t["no"],
            ]
            for host, c in run["connections"].items()
        ]
        blocks.append(("table", [t["host"], t["address"], t["port"], t["user"], t["become"]], rows))
        blocks.append(("h4", t["commands"]))
        rows = [
            [
                f"{e(c['section'])} {c['step']}: {e(c['name'])}",
                ", ".join(e(h) for h in g["hosts"]),
                e(g["text"] or g["note"]),
            ]
            for c in facts["commands"]
            if c["run"] == run["id"]
            for g in c["groups"]
        ]
        blocks.append(("table", [t["step"], t["hosts"], t["action"]], rows))
        tasks = [
            [
                e(c["host"]),
                f"{e(c['section'])} {c['step']}: {e(c['task'])}",
                e(c["message"]),
                e(c["at"]),
            ]
            for c in facts["changed_tasks"]
            if c["run"] == run["id"]
        ]
        if tasks:
            blocks.append(("h4", t["changed_tasks"]))
            blocks.append(("table", [t["host"], t["task"], t["message"], t["when"]], tasks))
        where = f"{e(run['runbook']['path'])}, sha256 {e(run['runbook']['sha256'])}"
        blocks.append(("h4", f"{t['text']} ({where})"))
        blocks.append(("code", run["runbook"]["text"] or ""))
    if document.get("problems"):
        blocks.append(("h2", t["problems"]))
        blocks.append(("list", [e(p) for p in document["problems"]]))
    return blocks


def _selection(selection: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in selection.items())


def _status(status: str | None, t: Mapping[str, str] | None = None) -> str:
    """A status as the record says it, in the report's language."""
    said = status or ""
    return (t or {}).get(f"status:{said}") or said.replace("_", " ")


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# --- Markdown -------------------------------------------------------------------------------


MD_SPECIAL = re.compile(r"([\\`*_\[\]()!|#~{}+])")


def md_plain(value: Any) -> str:
    """A value from the record as plain Markdown text: no markup (`*`, `_`, links, images,
    code spans, table pipes are escaped; `&`, `<`, `>` are entities, so no HTML), and no
    line breaks (a CR or LF would end a table row or start a block)."""
    text = re.sub(r"[\r\n\u2028\u2029\x0b\x0c\x85]+", " ", str(value))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return MD_SPECIAL.sub(r"\\\1", text)


def html_plain(value: Any) -> str:
    """A value from the record as HTML text (escaped when written); a backquote in it
    stays a backquote rather than starting a code span."""
    return str(value).replace("`", "\uff40")


def _markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3", "h4"):
            out += ["#" * int(kind[1]) + " " + rest[0], ""]
        elif kind in ("p", "note"):
            out += [rest[0], ""]
        elif kind == "alert":
            out += [f"> **{rest[0]}**", ""]
        elif kind == "list":
            out += [f"- {item}" for item in rest[0]] + [""]
        elif kind == "table":
            headers, rows = rest
            out.append("| " + " | ".join(headers) + " |")
            out.append("|" + "---|" * len(headers))
            out += ["| " + " | ".join(row) + " |" for row in rows]
            out.append("")
        elif kind == "code":
            fence = "```"
            while fence in rest[0]:
                fence += "`"
            out += [fence + "yaml", rest[0].rstrip("\n"), fence, ""]
    return "\n".join(out)


def _md_embed(document: Mapping[str, Any]) -> str:
    packed = base64.b64encode(json.dumps(document, ensure_ascii=False).encode()).decode()
    return f"{MD_MARK}{packed} -->\n"


# --- HTML -----------------------------------------------------------------------------------

CSS = """
@page { size: A4; margin: 16mm 14mm; }
body { font: 10.5pt/1.45 system-ui, -apple-system, "Segoe UI", "Noto Sans", "Noto Sans CJK SC",
       "Microsoft YaHei", sans-serif; color: #1b1f24; max-width: 60em; margin: 2em auto;
       padding: 0 1em; }
h1 { font-size: 18pt; border-bottom: 2px solid #1b1f24; padding-bottom: .2em; }
h2 { font-size: 13pt; margin-top: 1.6em; border-bottom: 1px solid #c9ced6; break-after: avoid; }
h3 { font-size: 11.5pt; margin-top: 1.2em; break-after: avoid; }
h4 { font-size: 10.5pt; margin: 1em 0 .3em; color: #444c56; break-after: avoid; }
table { border-collapse: collapse; width: 100%; margin: .3em 0 1em; font-size: 9.5pt; }
th, td { border: 1px solid #c9ced6; padding: .25em .45em; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
th { background: #f1f3f5; }
tr { break-inside: avoid; }
pre { background: #f6f8fa; border: 1px solid #d8dee4; padding: .6em; font-size: 8.5pt;
      white-space: pre-wrap; overflow-wrap: anywhere; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
.note { color: #57606a; font-size: 9pt; }
.alert { background: #ffebe9; border: 2px solid #cf222e; color: #82071e; padding: .5em .8em;
         font-weight: bold; }
@media print { body { margin: 0; max-width: none; } .note { display: none; } }
"""


def _inline(text: str) -> str:
    """Escaped text, with `code` spans."""
    parts = re.split(r"`([^`]+)`", text)
    return "".join(
        f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts)
    )


def _html(blocks: Sequence[Block], document: Mapping[str, Any]) -> str:
    lang = "zh-CN" if document["lang"] == "zh" else "en"
    title = html.escape(str(blocks[0][1]))
    out = [
        "<!DOCTYPE html>",
        f'<html lang="{lang}">',
        '<head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
    ]
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3", "h4"):
            out.append(f"<{kind}>{_inline(rest[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(rest[0])}</p>")
        elif kind == "note":
            out.append(f'<p class="note">{_inline(rest[0])}</p>')
        elif kind == "alert":
            out.append(f'<p class="alert" role="alert">{_inline(rest[0])}</p>')
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in rest[0]) + "</ul>")
        elif kind == "table":
            headers, rows = rest
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                for row in rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "code":
            out.append(f"<pre><code>{html.escape(rest[0])}</code></pre>")
    packed = (
        json.dumps(document, ensure_ascii=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    out += [f"{HTML_MARK}{packed}</script>", "</body>", "</html>", ""]
    return "\n".join(out)
