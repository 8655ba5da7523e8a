"""A run's report from its files alone (no model, no training): ``DIR/report.html``, one self-contained page (the
figures as data URIs, nothing fetched), and ``DIR/report.md`` for pasting (figures as relative links).

The page is built from a list of sections, each a list of blocks (text, table, figure, preformatted), rendered
twice. Every block of results.json that is present is shown; a block this module does not know (``attacks``, a new
method's numbers) is shown generically, and a section that cannot be rendered says so instead of failing the report.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from ..runs import load_results
from ..surrogate import z_blind_nelbo
from ..utils import atomic_write_text
from .figures import FIGURES
from .plots import plot_baseline_curves, plot_sa_curves

KNOWN = {"config", "processes", "forget_classes", "forget_request", "forgotten_before",
         "before", "after", "surrogate", "summary", "evaluator", "baseline",
         "sa_history", "timing_s", "latent", "environment", "collateral", "paper_protocol"}
METRICS = (("p_class", "P(y=c)", ".4f"), ("p_reject", "P(reject)", ".4f"), ("sample_acc", "sample acc", ".4f"),
           ("entropy", "entropy (nats)", ".3f"), ("test_nelbo", "test nELBO", ".2f"))


def fmt(v, spec: str = ".4g") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        return format(v, spec)
    return str(v)


def table(header, rows, folded: str | None = None) -> dict:
    return {"kind": "table", "header": list(header), "rows": [[fmt(c) for c in r] for r in rows], "folded": folded}


def text(s: str) -> dict:
    return {"kind": "text", "text": s}


def pre(s: str, folded: str | None = None) -> dict:
    return {"kind": "pre", "text": s, "folded": folded}


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def request_text(r: dict) -> list[dict]:
    """Which classes this request forgot and which the ``--checkpoint`` model had forgotten before (none for runs
    written before results.json recorded them)."""
    if "forget_request" not in r:
        return []
    earlier = r.get("forgotten_before") or []
    return [text(f"This request forgot {', '.join(map(str, r['forget_request']))}; forgotten before (by the "
                 f"--checkpoint model, kept forgotten): {', '.join(map(str, earlier)) if earlier else 'none'}.")]


def metrics_section(r: dict) -> list[dict]:
    forget = [str(c) for c in r.get("forget_classes", [])]
    before, after = r["before"]["per_class"], r.get("after", {}).get("per_class", {})
    keep = [k for k in before if k not in forget]
    header = ["", *[f"{name} {w}" for _, name, _ in METRICS for w in ("before", "after")]]

    def row(name, pick):
        return [name, *[fmt(pick(pc, key), spec) for key, _, spec in METRICS for pc in (before, after)]]

    rows = [row(f"class {c} (forgotten)", lambda pc, key, c=c: pc.get(c, {}).get(key)) for c in forget]
    rows.append(row(f"retained mean ({len(keep)} classes)",
                    lambda pc, key: _mean([pc.get(k, {}).get(key) for k in keep])))
    per = [[k + (" (forgotten)" if k in forget else ""),
            *[fmt(pc.get(k, {}).get(key), spec) for key, _, spec in METRICS for pc in (before, after)]]
           for k in sorted(before, key=int)]
    return [*request_text(r), text("On the model's samples of label c: P(y=c), the evaluator's mean probability of c; P(reject), its "
                 "mean probability of \"not a digit\" (– for an evaluator without a reject class); sample acc, the "
                 "share classified c; entropy, the evaluator's mean entropy. Test nELBO: mean negative ELBO of the "
                 "real test images of class c under label c."),
            table(header, rows), table(header, per, folded="Per-class table")]


def surrogate_section(r: dict) -> list[dict]:
    s = r["surrogate"]
    rows = [[f"{name}: P(y={c})", s[key]["p_class"].get(c)] for key, name in (("ideal", "ideal output"),
                                                                              ("samples", "raw surrogate samples"))
            for c in s[key]["p_class"]]
    rows += [["ideal output: entropy", s["ideal"]["entropy"]], ["raw surrogate samples: entropy",
                                                               s["samples"]["entropy"]]]
    rows += [[f"{name}: P(reject)", s[key]["p_reject"]] for key, name in (("ideal", "ideal output"),
                                                                        ("samples", "raw surrogate samples"))
             if s[key].get("p_reject") is not None]
    rows += [[f"surrogate nELBO {k}", v] for k, v in s["nelbo"].items()]
    return [text(f"Surrogate q(x|c_f): {s['kind']}. The ideal output is the surrogate's mean image (what a perfectly "
                 "forgotten model would output); z_blind is the surrogate's nELBO under the best decoder that ignores "
                 "z (a reference, not a lower bound: a decoder that reads z can go below it)."),
            table(["quantity", "value"], rows)]


def latent_section(r: dict) -> list[dict]:
    lat = r["latent"]
    forget = list(lat["before"].get("forgotten", {}))
    rows = [[f"class {c} (forgotten)", lat["before"]["per_class"].get(c), lat["after"]["per_class"].get(c)]
            for c in forget]
    rows.append(["retained mean", lat["before"]["retained_mean"], lat["after"]["retained_mean"]])
    drift = lat.get("drift", {"per_class": {}, "forgotten": {}})
    for row, c in zip(rows, forget + [None]):
        row.append(drift["forgotten"].get(c) if c is not None else drift.get("retained_mean"))
    per = [[c, lat["before"]["per_class"][c], lat["after"]["per_class"].get(c), drift["per_class"].get(c)]
           for c in sorted(lat["before"]["per_class"], key=int)]
    return [text(f"{lat.get('metric', 'silhouette')} of {lat.get('space', 'the latent means')}; "
                 f"{lat.get('n_images', '?')} images. 1: tight, separate clusters; 0: overlapping; < 0: closer to "
                 "another class. The encoder sees the label, so a cVAE need not separate classes in z: compare "
                 "before with after. Drift: mean distance each image's latent mean moved, over its class's RMS "
                 "spread before (0: unchanged)."),
            table(["", "silhouette before", "silhouette after", "drift"], rows),
            table(["class", "silhouette before", "silhouette after", "drift"], per, folded="Per-class silhouette")]


def collateral_section(r: dict) -> list[dict]:
    col, after, before = r["collateral"], r["after"]["confusion"], r["before"]["confusion"]
    moved = ", ".join(f"{c} ({col['retained'][c]['own_change']:+.4f}, most to {col['retained'][c]['largest_gain']})"
                      for c in col["most_moved"])
    gone = ", ".join(f"{c} -> {v['to']} ({v['p']:.3f})" for c, v in col["forgotten"].items())
    rows = [[c, *[f"{v:.4f}" for v in row]] for c, row in zip(after["labels"], after["mean_p"])]
    diff = [[c, *[f"{x - y:+.4f}" for x, y in zip(ra, rb)]]
            for c, ra, rb in zip(after["labels"], after["mean_p"], before["mean_p"])]
    rows_kept = [[c, v["own_before"], v["own_after"], v["own_change"], v["largest_gain"], v["largest_gain_change"]]
                 for c, v in col["retained"].items()]
    return [text("For samples of each label asked for, the evaluator's mean probability of each class it sees. "
                 f"Retained labels whose own mass moved most: {moved}. Forgotten labels now look like: {gone}."),
            table(["retained label", "own P before", "own P after", "change", "largest gain to", "its change"],
                  rows_kept),
            table(["label", *after["seen"]], rows, folded="After: label -> class seen"),
            table(["label", *after["seen"]], diff, folded="Change: after - before")]


def evaluator_section(r: dict) -> list[dict]:
    ev = r["evaluator"]
    rows = [[k, ev.get(k)] for k in ("version", "test_acc", "reject_acc", "ece", "ece_uncalibrated", "temperature")
            if k in ev]
    rows += [[f"P(reject): {k}", v] for k, v in (ev.get("p_reject") or {}).items()]
    return [text("The classifier that scores every sample (version 1: ten digits; version 2: ten digits and "
                 "\"not a digit\", temperature-scaled). ECE: expected calibration error, 15 bins, on test digits "
                 "and fresh non-digits."), table(["item", "value"], rows)]


def paper_section(r: dict) -> list[dict]:
    p = r["paper_protocol"]
    ex = p.get("official_readme_example") or {}
    rows = [[f"class {c}", v["before"]["entropy"], v["before"]["p_forgotten"], v["after"]["entropy"],
             v["after"]["p_forgotten"]] for c, v in p["per_class"].items()]
    if ex:
        rows.append([f"official README example (digit {ex.get('forget')})", None, None, ex.get("entropy"),
                     ex.get("p_forgotten")])
    acc = (p.get("classifier") or {}).get("test_acc")
    return [text(f"The official code's evaluation: its classifier (test accuracy {fmt(acc)}), {p.get('n_samples')} "
                 "samples of the forgotten class rounded to 8 bits, mean entropy (nats) and mean P(y=c_f)."),
            table(["", "entropy before", "P(y=c_f) before", "entropy after", "P(y=c_f) after"], rows)]


def timing_section(r: dict) -> list[dict]:
    rows = [[k, v] for k, v in r.get("timing_s", {}).items()]
    rows += [["processes", r.get("processes")]] if "processes" in r else []
    rows += [[f"environment: {k}", v] for k, v in r.get("environment", {}).items()]
    return [table(["item", "seconds / value"], rows)]


def generic_section(value) -> list[dict]:
    """A dict of flat dicts becomes a table (rows: keys, columns: the union of sub-keys); anything else JSON."""
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()) and all(
            not isinstance(x, (dict, list)) for v in value.values() for x in v.values()):
        cols = list(dict.fromkeys(k for v in value.values() for k in v))
        return [table(["", *cols], [[k, *[v.get(c) for c in cols]] for k, v in value.items()])]
    if isinstance(value, dict) and value and all(not isinstance(v, (dict, list)) for v in value.values()):
        return [table(["key", "value"], list(value.items()))]
    return [pre(json.dumps(value, indent=2), folded="JSON")]


def figure_blocks(run_dir: Path) -> list[dict]:
    names = [n for n in FIGURES if (run_dir / n).is_file()]
    names += sorted(p.name for p in run_dir.glob("*.png") if p.name not in FIGURES)
    return [{"kind": "figure", "path": run_dir / n, "caption": FIGURES.get(n, n)} for n in names]


def sections(run_dir: Path, r: dict) -> list[tuple[str, list[dict]]]:
    out = []
    builders = [("Forgetting and retention (before -> after)", "before", metrics_section),
                ("Surrogate", "surrogate", surrogate_section),
                ("Collateral damage: label asked for -> class seen", "collateral", collateral_section),
                ("Latent space: silhouette of the latent means", "latent", latent_section),
                ("Paper protocol (the official code's evaluation)", "paper_protocol", paper_section),
                ("Evaluator", "evaluator", evaluator_section),
                ("Timings (seconds) and machine", "timing_s", timing_section)]
    for title, key, build in builders:
        if key in r:
            try:
                out.append((title, build(r)))
            except (KeyError, TypeError, AttributeError, ValueError) as e:
                out.append((title, [text(f"(could not render this block: {type(e).__name__}: {e})")]))
    figs = figure_blocks(run_dir)
    if figs:
        out.insert(1, ("Figures", figs))
    for key in [k for k in r if k not in KNOWN]:
        out.append((key, generic_section(r[key])))
    cfg = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else \
        json.dumps(r.get("config"), indent=2)
    out.append(("Config", [pre(cfg, folded="config.yaml")]))
    return out


def headline(run_dir: Path, r: dict) -> str:
    cfg = r.get("config") or {}
    arch = (cfg.get("model") or {}).get("arch", "?")
    method = r.get("method") or cfg.get("method") or "Selective Amnesia"
    forget = ", ".join(map(str, r.get("forget_classes", []))) or "?"
    return f"{method}, {arch} cVAE, forget {forget}: {run_dir.name}"


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f2f2f2}img{max-width:100%}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}pre{background:#f7f7f7;padding:.6em;overflow:auto}"""


def _html_block(b: dict) -> str:
    e = html.escape
    if b["kind"] == "text":
        return f"<p>{e(b['text'])}</p>"
    if b["kind"] == "figure":
        data = base64.b64encode(b["path"].read_bytes()).decode()
        return (f'<figure><img alt="{e(b["path"].name)}" src="data:image/png;base64,{data}">'
                f"<figcaption><code>{e(b['path'].name)}</code>: {e(b['caption'])}</figcaption></figure>")
    if b["kind"] == "table":
        head = "".join(f"<th>{e(h)}</th>" for h in b["header"])
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b["rows"])
        out = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    else:
        out = f"<pre>{e(b['text'])}</pre>"
    return f"<details><summary>{e(b['folded'])}</summary>{out}</details>" if b.get("folded") else out


def _md_block(b: dict) -> str:
    if b["kind"] == "text":
        return b["text"]
    if b["kind"] == "figure":
        return f"![{b['path'].name}]({b['path'].name})\n\n*{b['path'].name}*: {b['caption']}"
    if b["kind"] == "table":
        cell = lambda c: str(c).replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(map(cell, b["header"])) + " |", "|" + " --- |" * len(b["header"])]
        out = "\n".join(lines + ["| " + " | ".join(map(cell, r)) + " |" for r in b["rows"]])
    else:
        out = f"```\n{b['text'].rstrip()}\n```"
    return f"<details><summary>{b['folded']}</summary>\n\n{out}\n\n</details>" if b.get("folded") else out


def render_html(title: str, secs) -> str:
    body = "".join(f"<h2>{html.escape(t)}</h2>" + "".join(_html_block(b) for b in blocks) for t, blocks in secs)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def render_md(title: str, secs) -> str:
    return f"# {title}\n\n" + "".join(f"## {t}\n\n" + "".join(_md_block(b) + "\n\n" for b in blocks)
                                      for t, blocks in secs)


def ensure_curves(run_dir: Path, r: dict) -> None:
    """Draw the curves from results.json when the run has none (runs written before figures existed)."""
    hist = (r.get("baseline") or {}).get("history")
    if hist and not (run_dir / "curves_baseline.png").is_file():
        plot_baseline_curves(hist, run_dir / "curves_baseline.png")
    rows = (r.get("sa_history") or {}).get("rows")
    if rows and not (run_dir / "curves_sa.png").is_file():
        plot_sa_curves(rows, run_dir / "curves_sa.png", z_blind_nelbo((r.get("surrogate") or {}).get("nelbo", {})))


def build_report(run_dir: str | Path, draw: bool = True) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` in ``run_dir`` from its results.json, config.yaml and PNGs
    (``draw``: the training curves first when the run has none)."""
    run_dir = Path(run_dir)
    r = load_results(run_dir)
    if draw:
        ensure_curves(run_dir, r)
    title, secs = headline(run_dir, r), sections(run_dir, r)
    atomic_write_text(run_dir / "report.html", render_html(title, secs))
    atomic_write_text(run_dir / "report.md", render_md(title, secs))
    return run_dir / "report.html", run_dir / "report.md"
