"""A self-contained HTML report, drawn from report documents (the JSON reports).

One file, inline CSS and inline SVG plots, no script and nothing fetched from the network. The
numbers are formatted by `fmt` from the same documents the JSON report holds, so both agree.
"""

from __future__ import annotations

import html
import json
from typing import Any

from trtcheck.report import plots
from trtcheck.report.numbers import fmt

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1180px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 6px;border-top:1px solid #ddd;
padding-top:16px} h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0} th,td{padding:3px 8px;
border-bottom:1px solid #eee;text-align:right} th{background:#f6f6f6}
td.l,th.l{text-align:left}
.pass{color:#1a7f37;font-weight:600} .fail{color:#c62828;font-weight:600}
.error{color:#b26a00;font-weight:600} .muted{color:#666;font-size:13px}
pre{background:#f6f8fa;padding:8px;font-size:12px;white-space:pre-wrap;word-break:break-all}
.plots{display:flex;flex-wrap:wrap;gap:8px} .plots svg{width:520px;height:auto}
.box{border-left:4px solid #c62828;padding:4px 12px;background:#fff5f5;margin:8px 0}
.ok{border-left-color:#1a7f37;background:#f3fbf5}
.warn{border-left-color:#b26a00;background:#fff8e1;font-size:16px}
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _verdict(verdict: str) -> str:
    return f'<span class="{_e(verdict)}">{_e(verdict.upper())}</span>'


def _table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>'
                   for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{cell}</td>'
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _outputs(document: dict[str, Any]) -> str:
    rows = []
    for out in document["outputs"]:
        index = "[" + ",".join(str(i) for i in out["max_abs_index"]) + "]"
        method = out.get("method", "elementwise")
        rows.append([
            _e(out["name"]),
            '<span class="error">EMPTY</span>' if not out.get("checked", True) else
            _verdict("pass" if out["passed"] else "fail"),
            f'{fmt(out["max_abs_error"])} @ {_e(index)}',
            f'{fmt(out["reference_at_max"])} &rarr; {fmt(out["target_at_max"])}',
            fmt(out["max_rel_error"]), fmt(out["mean_abs_error"]), fmt(out["p99_abs_error"]),
            "-" if method == "exact" else fmt(out["cosine"], missing="undefined"),
            f'{out["exceeding"]} of {out["elements"]}'
            + {"exact": " differ", "detections": " paired"}.get(method, ""),
            f'{fmt(out["required_atol"])} | {fmt(out["required_rtol"])}',
        ])
    return _table(["output", "verdict", "max abs err @ index", "reference → target", "max rel",
                   "mean abs", "p99 abs", "cosine", "exceeding", "needs atol | rtol"],
                  rows) + _output_notes(document)


def _output_notes(document: dict[str, Any]) -> str:
    """Warnings per output (constant reference, undefined cosine, empty) and detection pairings."""
    items = [f'<li class="error">{_e(out["name"])}: {_e(warning)}</li>'
             for out in document["outputs"] for warning in out.get("warnings", [])]
    seen = []
    for out in document["outputs"]:
        match = out.get("detections")
        if not match or match["spec"] in seen:
            continue
        seen.append(match["spec"])
        spec = match["spec"]
        names = ", ".join(spec[key] for key in ("packed", "boxes", "scores", "labels")
                          if spec[key])
        text = (f'detections {_e(names)}: '
                f'matched {match["matched"]} (reference {match["reference_count"]}, target '
                f'{match["target_count"]}, IoU &ge; {fmt(spec["iou"])}); paired: '
                f'min IoU {fmt(match["min_iou"])}, box error {fmt(match["max_box_error"])}, '
                f'score error {fmt(match["max_score_error"])}')
        unmatched = [f'{side}: #{_e(",".join(map(str, d["index"])))} label {fmt(d["label"])} '
                     f'score {fmt(d["score"])} box [{", ".join(fmt(v) for v in d["box"])}]'
                     for side, key in (("only in the reference", "unmatched_reference"),
                                       ("only in the target", "unmatched_target"))
                     for d in match[key]]
        items.append(f"<li>{text}" + (f'<ul>{"".join(f"<li>{u}</li>" for u in unmatched)}</ul>'
                                      if unmatched else "") + "</li>")
    return f'<ul class="muted">{"".join(items)}</ul>' if items else ""


def _plots(document: dict[str, Any]) -> str:
    parts = []
    for out in document["outputs"]:
        if out["passed"]:
            continue
        figures = []
        if out.get("error_histogram"):
            figures.append(plots.error_histogram(out["error_histogram"], out["name"]))
        if out.get("sample") and out["sample"]["reference"]:
            tolerance = out["tolerance"]
            figures.append(plots.error_vs_reference(out["sample"], out["name"],
                                                    float(tolerance["atol"]),
                                                    float(tolerance["rtol"])))
        failures = "".join(f"<li>{_e(f)}</li>" for f in out["failures"])
        parts.append(f'<h3>{_e(out["name"])}</h3><ul>{failures}</ul>'
                     f'<div class="plots">{"".join(figures)}</div>')
    return "".join(parts)


def _layers(layers: list[dict[str, Any]]) -> str:
    """The quantized layers: SQNR along the graph, then the worst of them as a table."""
    rows = [[_e(row["node"]), _e(row["op"]), fmt(row["sqnr_db_isolated"]),
             fmt(row["cosine_isolated"]), fmt(row["sqnr_db_accumulated"]),
             fmt(row["cosine_accumulated"])] for row in layers[:20]]
    return ("<h3>Quantized layers</h3>"
            f'<div class="plots">{plots.layerwise_sqnr(layers, "quantized layers")}</div>'
            + _table(["layer", "op", "SQNR isolated (dB)", "cosine isolated",
                      "SQNR accumulated (dB)", "cosine accumulated"], rows, left=2))


def _bisect(bisect: dict[str, Any]) -> str:
    culprit = bisect["culprit"]
    local = {True: "local", False: "inherited", None: "could not be run alone"}[culprit["local"]]
    why = "".join(f"<li>{_e(line)}</li>" for line in bisect["explanation"])
    parts = [
        "<h3>Bisection</h3>",
        f'<div class="box"><b>culprit: {_e(culprit["node"] or "(unnamed)")}</b> '
        f'({_e(culprit["op"])}) &rarr; <code>{_e(culprit["tensor"])}</code>: {_e(local)}; '
        f'alone on the target: relative error {fmt(culprit["local_error"])}<ul>{why}</ul>'
        f'<div class="muted">criterion: {_e(bisect["criterion"])}</div>'
        f'<div class="muted">{bisect["target_runs"]} target run(s), mode {_e(bisect["mode"])}; '
        f'{_e(bisect["note"])}</div></div>',
    ]
    if bisect["trace"]:
        parts.append('<div class="plots">' + plots.bisect_trace(
            bisect["trace"], culprit["index"], bisect["output"]) + "</div>")
        rows = [[str(p["index"]), _e(p["node"]), _e(p["op"]), _e(p["tensor"]),
                 fmt(p["max_abs_error"]), fmt(p["tolerance"]), fmt(p["max_abs_reference"]),
                 '<span class="fail">diverged</span>' if p["diverged"] else "ok"]
                for p in bisect["trace"][-40:]]
        parts.append(_table(["#", "node", "op", "tensor", "max abs error", "atol",
                             "max |reference|", "verdict"], rows, left=4))
    fix = bisect.get("precision_fix")
    if fix and bisect.get("tensorrt_blocked"):
        parts.append(f'<div class="box fail"><b>TensorRT cannot parse this model, so the '
                     f'precision fix below holds for the emulated target only:</b> '
                     f'{_e(bisect["tensorrt_blocked"])}</div>')
    if fix and fix.get("exclude_lists") is not None:
        state = "verified" if fix["verified"] else f'not verified: {fix.get("remaining")}'
        lists = "\n".join(f"{_e(q)} nodes_to_exclude: {_e(repr(names))}"
                          for q, names in fix["exclude_lists"].items())
        parts.append(f'<div class="box ok"><b>INT8 fix ({state}):</b> leave '
                     f'{_e(", ".join(fix["keep_fp32"]))} unquantized<pre>{lists}'
                     + (f'\nTensorRT, strongly typed: {_e(fix["trt11_model"])}'
                        if fix["trt11_model"] else "") + "</pre></div>")
    elif fix:
        state = "verified" if fix["verified"] else f'not verified: {fix.get("remaining")}'
        parts.append(f'<div class="box ok"><b>precision fix ({state}):</b> keep '
                     f'{_e(", ".join(fix["keep_fp32"]))} in fp32<pre>--keep-fp32 '
                     f'{_e(" ".join(fix["keep_fp32"]))}\nTensorRT 10: {_e(fix["trt10_flags"])}'
                     + (f'\nTensorRT 11: {_e(fix["trt11_model"])}' if fix["trt11_model"] else "")
                     + "</pre></div>")
    if bisect.get("repro_dir"):
        parts.append(f'<p class="muted">repro folder: <code>{_e(bisect["repro_dir"])}</code></p>')
    return "".join(parts)


def _tensorrt_support(document: dict[str, Any]) -> str:
    """What TensorRT's parser will reject (compare's lint section), as a box; else nothing."""
    support = document.get("tensorrt_support")
    if not support or not support["summary"]:
        return ""
    rows = [[_e(e["node"] or "(model)"), _e(e["op"] or "-"), _e(e["reason"])]
            for e in support["errors"]]
    more = support["error_count"] - len(rows)
    return (f'<div class="box fail"><b>{_e(support["summary"])}</b>'
            + (_table(["node", "op", "reason"], rows, left=3) if rows else "")
            + (f'<p class="muted">{more} more: <code>{_e(support["command"])}</code></p>'
               if more > 0 else "") + "</div>")


def _section(document: dict[str, Any], title: str, extra: dict[str, Any]) -> str:
    anchor = _e(title)
    if document["verdict"] == "error":
        return (f'<h2 id="{anchor}">{_e(title)} {_verdict("error")}</h2>'
                f'<pre>{_e(document["error"])}</pre>')
    config = document["config"]
    inputs = _table(["input", "dtype", "shape", "range", "range from"], [
        [_e(i["name"]), _e(i["dtype"]), _e(i["shape"]),
         f'[{fmt(i["range"][0])}, {fmt(i["range"][1])}]',
         _e(i.get("range_from") or i["source"])]
        for i in config["inputs"]])
    inputs += "".join(f'<p class="muted">warning: {_e(w)}</p>'
                      for w in config.get("input_warnings", []))
    notes = "".join(f"<li>{_e(n)}</li>" for n in [*extra.get("notes", []),
                                                   *document.get("hints", [])])
    golden = extra.get("golden")
    golden_line = (f'<p>golden: {_verdict("pass" if golden["status"] == "pass" else "fail")} '
                   f'{_e(golden["message"])}</p>' if golden else "")
    return "".join([
        f'<h2 id="{anchor}">{_e(title)} {_verdict(document["verdict"])}</h2>',
        f'<p class="muted">{_e(document["model"]["path"])} (sha256 '
        f'{_e((document["model"]["sha256"] or "")[:16])}) &middot; target '
        f'<b>{_e(config["target"]["backend"])}</b> vs reference '
        f'{_e(config["reference"]["backend"])}</p>',
        golden_line, _tensorrt_support(document), _outputs(document),
        f"<ul>{notes}</ul>" if notes else "",
        _plots(document),
        _layers(document["layers"]) if document.get("layers") else "",
        _bisect(document["bisect"]) if document.get("bisect") else "",
        (f'<div class="box fail">bisect failed: {_e(document["bisect_error"])}; the verdict '
         'above stands</div>') if document.get("bisect_error") else "",
        "<h3>Inputs</h3>", inputs,
        "<h3>Reproduce</h3>",
        (f'<p class="muted">{_e(document["polygraphy_note"])}</p>'
         if document.get("polygraphy_note") else ""),
        "<pre>",
        _e("\n".join(c for c in (extra.get("pytest_command"), document["trtcheck_command"],
                                 document["polygraphy_command"]) if c)),
        "</pre><details><summary>Effective configuration and versions</summary><pre>",
        _e(json.dumps({"config": config, "versions": document["versions"]}, indent=2)),
        "</pre></details>",
    ])


def render(items: list[tuple[str, dict[str, Any], dict[str, Any]]], title: str,
           overview: str | None = None) -> str:
    """A page for `items`: (title, compare document, extra: golden/notes/pytest_command).

    `overview` (HTML) replaces the counts drawn from the documents: a pytest run passes the
    counts pytest made (`run_summary.html_overview`), which include items without a document.
    """
    order = {"error": 0, "fail": 1, "pass": 2}
    items = sorted(items, key=lambda item: (order.get(item[1]["verdict"], 3), item[0]))
    counts = {verdict: sum(1 for _, d, _ in items if d["verdict"] == verdict)
              for verdict in ("fail", "error", "pass")}
    summary_rows = []
    for name, document, extra in items:
        failing = [o["name"] for o in document["outputs"] if not o["passed"]]
        target = (document.get("config") or {}).get("target", {}).get("backend", "-")
        culprit = (document.get("bisect") or {}).get("culprit", {}).get("node", "")
        row = [f'<a href="#{_e(name)}">{_e(name)}</a>', _e(target),
               _verdict(document["verdict"]), _e(", ".join(failing) or "-"), _e(culprit or "-")]
        if overview is not None:  # what pytest made of it: xfailed, error, crash, ...
            row.insert(3, _e(extra.get("outcome", "-")))
        summary_rows.append(row)
    headers = ["item", "target", "verdict", "failing outputs", "culprit"]
    if overview is not None:
        headers.insert(3, "pytest")
    summary = _table(headers, summary_rows, left=2)
    versions: dict[str, Any] = next((d["versions"] for _, d, _ in items if d.get("versions")),
                                    {})
    return "".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        overview or "",
        '<p class="muted">' + ("" if overview is not None else
                                f'{counts["fail"]} failed, {counts["error"]} error(s), '
                                f'{counts["pass"]} passed &middot; ') +
        f'trtcheck {_e(versions.get("trtcheck"))}, '
        f'polygraphy {_e(versions.get("polygraphy"))}, onnxruntime '
        f'{_e(versions.get("onnxruntime"))}, TensorRT {_e(versions.get("tensorrt") or "absent")}'
        "</p>", summary,
        *(_section(document, name, extra) for name, document, extra in items),
        "</body></html>\n",
    ])
