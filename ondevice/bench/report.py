"""Report writers: report.json (validated by report.schema.json), report.md, and a self-contained report.html
(inline CSS, plots as base64 PNG drawn with matplotlib's Agg canvas; no external URLs, no scripts).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from ondevice.io import atomic_write_json, atomic_write_text, read_json

SCHEMA_PATH = Path(__file__).resolve().parent / "report.schema.json"


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_report(report: dict) -> None:
    """Raise jsonschema.ValidationError when `report` (as written to JSON) does not match the schema."""
    import jsonschema

    from ondevice.io import dumps

    jsonschema.validate(json.loads(dumps(report)), load_schema())


def write_report(report: dict, out_dir: str | Path, *, plots: bool = True) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / "report.json"), "markdown": str(out / "report.md"), "html": str(out / "report.html")}
    report["files"] = files
    atomic_write_json(files["json"], report)
    atomic_write_text(files["markdown"], to_markdown(report))
    atomic_write_text(files["html"], to_html(report, plots=plots))
    return files


def load_report(path: str | Path) -> dict:
    p = Path(path)
    return read_json(p / "report.json" if p.is_dir() else p)


# --- formatting -------------------------------------------------------------------------------------------
def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if v in ("inf", "-inf", "nan"):
        return float(v)
    return None


def fmt_bytes(v: Any) -> str:
    x = _num(v)
    if x is None:
        return "-"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= div:
            return f"{x / div:.2f} {unit}"
    return f"{x:.0f} B"


def fmt(v: Any, spec: str = ".3g", suffix: str = "") -> str:
    x = _num(v)
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:{spec}}{suffix}"


def fmt_pct(v: Any) -> str:
    x = _num(v)
    return "-" if x is None else f"{100 * x:.2f}%"


def fmt_si(v: Any, unit: str) -> str:
    x = _num(v)
    if x is None:
        return "-"
    if x == 0:
        return f"0 {unit}"
    for p, s in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n"),
                 (1e-12, "p")):
        if abs(x) >= p:
            return f"{x / p:.3g} {s}{unit}"
    return f"{x:.3g} {unit}"


def yn(v: Any) -> str:
    return "-" if v is None else ("yes" if v else "no")


def _run(item: dict, threads: int) -> dict | None:
    return next((r for r in item["runs"] if r["threads"] == threads), None)


def _p50_cell(item: dict, threads: int) -> str:
    if not item["latency"]["measurable"]:
        return "not measurable here"
    r = _run(item, threads)
    if not r:
        return "-"
    if r["status"] == "failed":
        return "failed"
    lat = r.get("latency")
    if not lat:
        return "-"
    lo, hi = lat["p50_ci95_ms"]
    return f"{lat['p50_ms']:.4g} [{lo:.4g}, {hi:.4g}]"


# --- tables (shared by Markdown and HTML) --------------------------------------------------------------------
Table = tuple[str, str, list[str], list[list[str]]]


def tables(report: dict) -> list[Table]:
    """(title, caption, header, rows) for every table of the report."""
    return [_summary_table(report), _latency_table(report), _memory_table(report),
            *(_energy_table(report, p) for p in report["profiles"]), _host_energy_table(report)]


def _summary_table(report: dict) -> Table:
    threads, ml = report["config"]["threads"], report["measured_on"]
    hdr = ["item", "target", "precision", "status", "size", "accuracy", "retention", "agreement", "KL (nats)"] + \
          [f"p50 ms @{t}t [95% CI]" for t in threads]
    rows = []
    for it in report["items"]:
        a = it.get("accuracy") or {}
        rows.append([it["label"], it["target"], it.get("precision") or "?", it["status"], fmt_bytes(it["size_bytes"]),
                     fmt_pct(a.get("accuracy")), fmt_pct(a.get("retention")), fmt_pct(a.get("top1_agreement")),
                     fmt(a.get("kl_reference_model"), ".4f")] + [_p50_cell(it, t) for t in threads])
    ref = report.get("reference")
    return ("Summary", f"Accuracy, retention (accuracy / {ref or 'reference'}), top-1 agreement and "
                       f"KL({ref or 'reference'} || model) on {report['data']['accuracy_samples']} test samples; "
                       f"latency per query of batch {report['config']['batch_size']}; all {ml}.", hdr, rows)


def _latency_table(report: dict) -> Table:
    hdr = ["item", "threads", "status", "n", "p50 ms", "p50 95% CI", "p90 ms", "p99 ms", "mean ms", "std ms",
           "samples/s", "chunks"]
    rows = []
    for it in report["items"]:
        for r in it["runs"]:
            lat = r.get("latency")
            if lat:
                rows.append([it["label"], str(r["threads"]), r["status"], str(lat["n"]), fmt(lat["p50_ms"], ".4g"),
                             f"[{lat['p50_ci95_ms'][0]:.4g}, {lat['p50_ci95_ms'][1]:.4g}]", fmt(lat["p90_ms"], ".4g"),
                             fmt(lat["p99_ms"], ".4g"), fmt(lat["mean_ms"], ".4g"), fmt(lat["std_ms"], ".3g"),
                             fmt(lat["throughput_samples_per_s"], ".4g"), str(lat["chunks"])])
            else:
                why = it["latency"]["reason"] if r["status"] == "not_measurable" else \
                    ((r.get("error") or {}).get("message", "-"))
                rows.append([it["label"], str(r["threads"]), r["status"], "-", "-", _short(why), "-", "-", "-", "-",
                             "-", "-"])
    sr = report["schedule"]["stop_rule"]
    return ("Latency", f"{report['measured_on']}. Interleaved rounds ({report['schedule']['rounds']}); a variant stops "
                       f"at >= {sr['min_queries']} queries and >= {sr['min_seconds']} s measured, or at "
                       f"{sr['max_seconds']} s. 95% CI of p50: percentile bootstrap.", hdr, rows)


def _memory_table(report: dict) -> Table:
    hdr = ["item", "threads", "baseline RSS", "load peak above baseline", "RSS after load above baseline",
           "run peak above baseline", "file size", "runtime's own figures"]
    rows = []
    for it in report["items"]:
        rm = it.get("runtime_memory") or {}
        rms = ", ".join(f"{k}={fmt_bytes(v) if _num(v) is not None else v}" for k, v in rm.items()) or "-"
        for r in it["runs"]:
            m = r.get("memory")
            if m:
                rows.append([it["label"], str(r["threads"]), fmt_bytes(m["baseline_rss_bytes"]),
                             fmt_bytes(m["load_peak_rss_above_baseline"]), fmt_bytes(m["rss_after_load_above_baseline"]),
                             fmt_bytes(m["run_peak_rss_above_baseline"]), fmt_bytes(it["size_bytes"]), _short(rms, 120)])
            else:
                why = it["memory"].get("reason") or (r.get("error") or {}).get("message") or "-"
                rows.append([it["label"], str(r["threads"]), "-", _short(why), "-", "-", fmt_bytes(it["size_bytes"]),
                             _short(rms, 120)])
    method = next((it["memory"]["method"] for it in report["items"] if it["memory"].get("method")), "-")
    return ("Memory", f"{report['measured_on']}. Method: {method}.", hdr, rows)


def _energy_table(report: dict, p: dict) -> Table:
    name = p["name"]
    hdr = ["item", "precision", "MACs", "weights", "energy / inference", "latency", "bound", "sustainable /s",
           f"power @ {fmt(p.get('target_inferences_per_s', 30), 'g')}/s", "fits memory", "meets power", "passes",
           "note"]
    rows = []
    for it in report["items"]:
        est = next((e for e in (it["energy"].get("estimated") or []) if e["profile"] == name), None)
        if est is None:
            rows.append([it["label"], it.get("precision") or "?"] + ["-"] * 10
                        + [_short(it["energy"].get("estimated_reason") or "-")])
            continue
        rows.append([it["label"], it.get("precision") or "?", fmt_si(est["macs"], "MAC"),
                     fmt_bytes(est["weight_bytes"]), fmt_si(est["energy_per_inference_j"], "J"),
                     fmt_si(est.get("latency_s"), "s"), est.get("bound") or "-",
                     fmt(est.get("sustainable_rate_per_s"), ".4g"), fmt_si(est.get("power_at_target_rate_w"), "W"),
                     yn(est["fits_memory"]), yn(est["meets_power"]), yn(est["passes"]),
                     _short(est.get("reason") or "")])
    return (f"Energy, estimated ({name})",
            f"estimated ({name}): {p.get('description', '')}. Budget {fmt(p['sustained_power_w'], 'g')} W, "
            f"{fmt_bytes(p['memory_capacity_bytes'])} memory, one sample per inference; energy per op from "
            f"Horowitz, ISSCC 2014. Not measured.", hdr, rows)


def _host_energy_table(report: dict) -> Table:
    he = report["host_energy"]
    rows = [[it["label"], str(r["threads"]), fmt_si(r["host_energy"]["joules_per_inference"], "J")]
            for it in report["items"] for r in it["runs"] if r.get("host_energy")]
    cap = (f"{report['measured_on']}; RAPL package counters around each timed chunk (includes every process on the "
           f"package)." if he["available"] else f"Measured host energy unavailable: {he['reason']}.")
    return ("Host energy, measured", cap, ["item", "threads", "host energy / inference"], rows)


def _short(s: Any, n: int = 90) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(report: dict) -> str:
    c = report["config"]
    lines = [
        "# ondevice bench report",
        "",
        f"- {report['measured_on']}; created {report['created_utc']}",
        f"- mode `{c['mode']}`, threads {c['threads']}, batch size {c['batch_size']}, seed {c['seed']}",
        f"- data: {report['data']['source']} (latency inputs: {report['data']['latency_samples']} real samples "
        f"cycled; accuracy: {report['data']['accuracy_samples']} samples)"
        if not report["data"]["synthetic"] else f"- data: {report['data']['source']}",
        f"- load average before {_fmt_load(report['machine'].get('loadavg_before'))}, "
        f"after {_fmt_load(report['machine'].get('loadavg_after'))}",
        f"- libraries: " + ", ".join(f"{k} {v}" for k, v in (report["machine"].get("libraries") or {}).items() if v),
        "",
    ]
    for w in report.get("warnings", []):
        lines.append(f"> warning: {w}")
    if report.get("warnings"):
        lines.append("")
    for title, caption, hdr, rows in tables(report):
        lines += [f"## {title}", "", caption, ""]
        if rows:
            lines.append("| " + " | ".join(_md_cell(h) for h in hdr) + " |")
            lines.append("|" + "---|" * len(hdr))
            lines += ["| " + " | ".join(_md_cell(x) for x in r) + " |" for r in rows]
        else:
            lines.append("(none)")
        lines.append("")
    front = report["pareto"]["front"]
    lines += ["## Pareto front", "",
              f"Accuracy vs p50 latency at {report['pareto']['threads']} thread(s), measured: "
              + (", ".join(front) if front else "(no item has both numbers)"), ""]
    fails = [(it["label"], e) for it in report["items"] for e in it["errors"]]
    if fails:
        lines += ["## Failures", ""]
        for lab, e in fails:
            lines.append(f"- **{lab}** (threads {e.get('threads')}, {e['stage']}): {_md_cell(_short(e['message'], 300))}")
            tail = (e.get("stderr_tail") or "").strip()
            if tail:
                lines += ["", "  ```", *["  " + ln for ln in tail.splitlines()[-8:]], "  ```"]
        lines.append("")
    return "\n".join(lines) + "\n"


def _fmt_load(v) -> str:
    return "-" if not v else "/".join(f"{x:.2f}" for x in v)


# --- plots --------------------------------------------------------------------------------------------------
def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fig(w=7.0, h=4.2):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]


def plot_accuracy_latency(report: dict) -> tuple[str, str] | None:
    t = report["pareto"]["threads"]
    pts = []
    for it in report["items"]:
        r = _run(it, t)
        a = (it.get("accuracy") or {}).get("accuracy")
        if r and r.get("latency") and a is not None:
            pts.append((it["label"], it["target"], r["latency"]["p50_ms"], a, r["latency"]["p50_ci95_ms"]))
    if not pts:
        return None
    fig = _fig()
    ax = fig.add_subplot(1, 1, 1)
    targets = sorted({p[1] for p in pts})
    for lab, tg, lat, a, ci in pts:
        c = _COLORS[targets.index(tg) % len(_COLORS)]
        ax.errorbar([lat], [100 * a], xerr=[[lat - ci[0]], [ci[1] - lat]], fmt="o", color=c, capsize=3)
        ax.annotate(lab, (lat, 100 * a), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for tg in targets:
        ax.plot([], [], "o", color=_COLORS[targets.index(tg) % len(_COLORS)], label=tg)
    front = [p for p in pts if p[0] in report["pareto"]["front"]]
    front.sort(key=lambda p: p[2])
    if front:
        ax.step([p[2] for p in front], [100 * p[3] for p in front], where="post", color="black", lw=1, ls="--",
                label="Pareto front")
        ax.scatter([p[2] for p in front], [100 * p[3] for p in front], s=140, facecolors="none",
                   edgecolors="black", lw=1.2)
    ax.set_xlabel(f"p50 latency per query, ms (measured, {t} thread(s), 95% CI bars)")
    ax.set_ylabel("test accuracy, % (measured)")
    ax.set_title("Accuracy vs latency")
    lats = [p[2] for p in pts]
    if max(lats) / max(min(lats), 1e-9) > 20:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    cap = "Accuracy vs p50 latency (measured on this host; Pareto front dashed, ringed)"
    missing = [it["label"] for it in report["items"] if not it["latency"]["measurable"]]
    if missing:
        cap += f"; latency not measurable here, so not plotted: {', '.join(missing)}"
    return cap, _png(fig)


def plot_sizes(report: dict) -> tuple[str, str] | None:
    rows = [(it["target"], it.get("precision") or "?", it["size_bytes"], it["label"]) for it in report["items"]
            if _num(it.get("size_bytes"))]
    if not rows:
        return None
    precs = list(dict.fromkeys(r[1] for r in rows))
    targets = list(dict.fromkeys(r[0] for r in rows))
    fig = _fig(max(6.0, 1.1 * len(precs) + 3), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(targets))
    for ti, tg in enumerate(targets):
        xs, ys = [], []
        for pi, pr in enumerate(precs):
            vals = [r[2] for r in rows if r[0] == tg and r[1] == pr]
            if vals:
                xs.append(pi + (ti - (len(targets) - 1) / 2) * width)
                ys.append(max(vals) / 1024)
        bars = ax.bar(xs, ys, width=width, label=tg, color=_COLORS[ti % len(_COLORS)])
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(precs)), precs, rotation=20, fontsize=8)
    ax.set_ylabel("size, KiB (artifact on disk / weights)")
    ax.set_title("Size per target and precision")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return "Size per target and precision (files on disk; eager models: weights file or parameters)", _png(fig)


def plot_retention(report: dict) -> tuple[str, str] | None:
    by = {it["label"]: it for it in report["items"]}
    chain = [lab for lab in report["retention_chain"]
             if lab in by and (by[lab].get("accuracy") or {}).get("accuracy") is not None]
    if not chain:
        return None
    accs = [100 * by[lab]["accuracy"]["accuracy"] for lab in chain]
    fig = _fig(max(6.0, 0.8 * len(chain) + 2), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    colors = ["#444444" if by[lab]["role"] == "teacher" else "#2ca02c" if by[lab]["role"] == "student" else "#1f77b4"
              for lab in chain]
    ax.plot(range(len(chain)), accs, color="#999999", lw=1, zorder=1)
    ax.scatter(range(len(chain)), accs, c=colors, s=60, zorder=2)
    for i, lab in enumerate(chain):
        ret = by[lab]["accuracy"].get("retention")
        ax.annotate(f"{accs[i]:.2f}%" + (f"\n({100 * ret:.1f}%)" if ret is not None else ""), (i, accs[i]),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xticks(range(len(chain)), chain, rotation=25, ha="right", fontsize=8)
    lo, hi = min(accs), max(accs)
    span = max(2.0, hi - lo)
    ax.set_ylim(max(0.0, lo - 0.3 * span), hi + 0.25 * span)  # room above the points for the labels
    ax.set_ylabel("test accuracy, % (measured)")
    ax.set_title(f"Retention chain (in brackets: retention vs {report.get('reference') or 'reference'})")
    ax.grid(alpha=0.3)
    return "Retention chain teacher -> student -> artifacts (measured test accuracy)", _png(fig)


def plot_energy(report: dict) -> tuple[str, str] | None:
    profiles = [p["name"] for p in report["profiles"]]
    items = [it for it in report["items"] if it["energy"].get("estimated")]
    if not items or not profiles:
        return None
    fig = _fig(max(6.0, 1.0 * len(items) + 3), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(profiles)
    for pi, pn in enumerate(profiles):
        xs, ys = [], []
        for ii, it in enumerate(items):
            est = next((e for e in it["energy"]["estimated"] if e["profile"] == pn), None)
            if est and est.get("supported"):
                xs.append(ii + (pi - (len(profiles) - 1) / 2) * width)
                ys.append(est["energy_per_inference_j"] * 1e6)
        ax.bar(xs, ys, width=width, label=pn, color=_COLORS[pi % len(_COLORS)])
    ax.set_yscale("log")
    ax.set_xticks(range(len(items)), [it["label"] for it in items], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("energy per inference, uJ (estimated)")
    ax.set_title("Estimated energy per inference by device profile")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return "Energy per inference, estimated per device profile (no bar: precision unsupported there)", _png(fig)


PLOTS = (plot_accuracy_latency, plot_sizes, plot_retention, plot_energy)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f2f2f2} tr:nth-child(even) td{background:#fafafa}
figure{display:inline-block;margin:8px 16px 16px 0} figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:12px;color:#555} .warn{color:#8a5300} .caption{font-size:13px;color:#444}
pre{background:#f6f6f6;padding:6px;font-size:11px;overflow-x:auto}
"""


def to_html(report: dict, *, plots: bool = True) -> str:
    e = html.escape
    c = report["config"]
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>ondevice bench report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>ondevice bench report</h1>",
             f"<p>{e(report['measured_on'])}; created {e(report['created_utc'])}. Mode <code>{e(c['mode'])}</code>, "
             f"threads {e(str(c['threads']))}, batch size {c['batch_size']}. Data: {e(report['data']['source'])}.</p>"]
    for w in report.get("warnings", []):
        parts.append(f"<p class=\"warn\">warning: {e(w)}</p>")
    if plots:
        parts.append("<h2>Plots</h2><div id=\"plots\">")
        for fn in PLOTS:
            res = fn(report)
            if res is None:
                continue
            cap, b64 = res
            parts.append(f"<figure class=\"plot\" id=\"{fn.__name__}\"><img alt=\"{e(cap)}\" "
                         f"src=\"data:image/png;base64,{b64}\"><figcaption>{e(cap)}</figcaption></figure>")
        parts.append("</div>")
    for title, caption, hdr, rows in tables(report):
        parts.append(f"<h2>{e(title)}</h2><p class=\"caption\">{e(caption)}</p>")
        if not rows:
            parts.append("<p>(none)</p>")
            continue
        parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in hdr) + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>" for r in rows]
        parts.append("</tbody></table>")
    parts.append(f"<h2>Pareto front</h2><p>{e(', '.join(report['pareto']['front']) or '(none)')}</p>")
    fails = [(it["label"], er) for it in report["items"] for er in it["errors"]]
    if fails:
        parts.append("<h2>Failures</h2>")
        for lab, er in fails:
            parts.append(f"<p><b>{e(lab)}</b> (threads {er.get('threads')}, {e(er['stage'])}): {e(er['message'])}</p>")
            if er.get("stderr_tail"):
                parts.append(f"<pre>{e(er['stderr_tail'][-1500:])}</pre>")
    libs = ", ".join(f"{k} {v}" for k, v in (report["machine"].get("libraries") or {}).items() if v)
    parts.append(f"<h2>Environment</h2><p>{e(report['machine'].get('cpu_model') or '')}; flags "
                 f"{e(' '.join(report['machine'].get('cpu_flags') or []))}; load average before "
                 f"{_fmt_load(report['machine'].get('loadavg_before'))}, after "
                 f"{_fmt_load(report['machine'].get('loadavg_after'))}; Python {e(report['machine'].get('python') or '')};"
                 f" {e(libs)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
