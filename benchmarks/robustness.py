"""Forgetting that survives attacks: every method against the same attacks, per relearning lr and k, as ratios to
retraining, measured as cells (benchmarks/cells.py) of the table benchmarks/results/robustness/.

    python benchmarks/robustness.py --arch linear --forget 2 --seeds 0 1 2 --work runs/robustness
    python benchmarks/robustness.py --dry-run          # the cells, and which are done

For every architecture, forget set, seed (the baseline's and the unlearning's, like sweep --seeds) and method spec
(``NAME`` or ``NAME:key=value,...`` with ``sa.*`` keys of the run config, so an alpha sweep is cells too), cells:

* ``unlearn``: one ``run_unlearn`` into ``--work/<model>-<hash>/`` (``original``: θ* itself, evaluated): P(c_f),
  retained sample accuracy and test nELBO against θ*'s, seconds (Fisher and the method's own);
* ``relearn-kK`` for every K of ``--k``: fine-tuning on K real images of the class (0: retained classes only) at
  every lr of ``--lrs``: steps to P >= 0.5 and the area under the P curve, both judges (``sa_dist.attacks``);
* ``weights``: L2 and Fisher distance from θ* and the loss barrier; ``invert``: condition inversion (unless
  ``--restarts 0``).

A cell is keyed by everything that shapes it (the full run config, the attack settings, the evaluator's and the
paper classifier's fingerprints), written as it finishes and skipped when rerun with the same hash; the table
(OUT.md, .json, .png) is rendered from the cells alone (``robustness_table.py``).
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from cells import Table, config_hash
from robustness_plan import ATTACK_FLAGS, KINDS, TABLE, BenchConfig, Cell, attack_config, plan, run_config
from robustness_table import frontier, render
from sa_dist.attacks.relearn import Judges
from sa_dist.attacks.suite import AttackConfig, run_invert, run_relearn, run_weights
from sa_dist.cache import get_baseline, get_fisher
from sa_dist.checkpoint import load_checkpoint
from sa_dist.cli.flags import Parser, add_flags, dataclass_from_args, flagged_fields, run_main
from sa_dist.evaluation.evaluator import evaluator_fingerprint, get_evaluator
from sa_dist.evaluation.paper import get_paper_classifier, paper_classifier_path, paper_fingerprint
from sa_dist.pipeline import evaluate_run, run_unlearn
from sa_dist.resume import Interrupted
from sa_dist.runtime import make_accelerator
from sa_dist.utils import UsageError


# ---- measuring --------------------------------------------------------------------------------------------------

@dataclass
class Context:
    b: BenchConfig
    accelerator: object
    judges: Judges


def quality(res: dict) -> dict:
    """The quality bars' numbers of a results.json (or ``evaluate_run``) dict, the unlearned model against θ*."""
    s, b = res["summary"]["after"], res["summary"]["before"]
    return {"p_forgotten": max(s["forgotten_p_class"].values()), "retained_acc": s["retained_sample_acc"],
            "retained_acc_drop_pts": 100 * (b["retained_sample_acc"] - s["retained_sample_acc"]),
            "retained_nelbo_rise_pct": 100 * (s["retained_test_nelbo"] / b["retained_test_nelbo"] - 1)}


def run_dir(ctx: Context, cell: Cell) -> Path:
    """The unlearning run of ``cell``'s model: named by its unlearn cell and that cell's hash."""
    unlearn = cell.config if cell.kind == "unlearn" else cell.config["unlearn"]
    return Path(ctx.b.work) / f"{cell.unit_name}-{config_hash(unlearn)}"


def finished_run(ctx: Context, cell: Cell) -> tuple[dict, bool]:
    """(results.json, made before this cell): the unit's unlearning run, made now when missing (resumed from its
    saved state when interrupted; a half-made folder without one is ours, named by hash, and started afresh)."""
    path = run_dir(ctx, cell)
    if (path / "results.json").is_file():
        return json.loads((path / "results.json").read_text()), True
    resume = (path / "state").is_dir() and (path / "config.yaml").is_file()
    if path.exists() and not resume:
        shutil.rmtree(path)
    run_unlearn(run_config(ctx.b, cell.unit), run_dir=str(path), accelerator=ctx.accelerator, resume=resume)
    return json.loads((path / "results.json").read_text()), resume


def measure_unlearn(ctx: Context, cell: Cell) -> dict:
    cfg = run_config(ctx.b, cell.unit)
    if cell.unit.spec == "original":
        model, info = get_baseline(cfg, ctx.accelerator)
        metrics, _ = evaluate_run(cfg, model, model, ctx.accelerator.device)
        return {"quality": quality(metrics), "seconds": {"fisher": 0.0, "method": 0.0}, "baseline_key": info["key"]}
    res, before = finished_run(ctx, cell)
    t = res["timing_s"]
    return {"quality": quality(res), "seconds": {"fisher": t["fisher"] or 0.0, "method": t["unlearn"]},
            "cached": {"fisher": t["fisher_cached"], "method": t["unlearn_cached"]}, "run_made_before": before,
            "run_dir": str(run_dir(ctx, cell)), "baseline_key": res["baseline"]["key"],
            "method_info": res.get("method_info")}


def model_of(ctx: Context, cell: Cell):
    """The unit's model: θ* from the cache, or its unlearning run's (made again when --work lost it: seeded)."""
    cfg = run_config(ctx.b, cell.unit)
    if cell.unit.spec == "original":
        return get_baseline(cfg, ctx.accelerator)[0]
    finished_run(ctx, cell)
    return load_checkpoint(run_dir(ctx, cell) / "unlearned.safetensors", expect=cfg.model)[0]


def measure_relearn(ctx: Context, cell: Cell) -> dict:
    cfg, a = run_config(ctx.b, cell.unit), attack_config(ctx.b, cell.unit.seed, cell.k)
    block = run_relearn({"m": (model_of(ctx, cell), cell.unit.spec)}, ctx.judges, cfg, a, cell.unit.forget[0],
                        ctx.accelerator.device)
    return block["models"]["m"][f"k{cell.k}"]


def measure_weights(ctx: Context, cell: Cell) -> dict:
    base = run_config(ctx.b, cell.unit, with_spec=False)  # every method is measured in θ*'s one Fisher
    original, info = get_baseline(base, ctx.accelerator)
    fisher = get_fisher(base, original, info["key"], ctx.accelerator)[0]
    models = {"m": (model_of(ctx, cell), cell.unit.spec)}
    return run_weights(models, original, fisher, base, attack_config(ctx.b, cell.unit.seed), cell.unit.forget[0])[
        "models"]["m"]


def measure_invert(ctx: Context, cell: Cell) -> dict:
    models = {"m": (model_of(ctx, cell), cell.unit.spec)}
    return run_invert(models, ctx.judges.evaluator, attack_config(ctx.b, cell.unit.seed), cell.unit.forget[0],
                      ctx.accelerator.device, None)["models"]["m"]


MEASURE = {"unlearn": measure_unlearn, "relearn": measure_relearn, "weights": measure_weights,
           "invert": measure_invert}


# ---- the command ------------------------------------------------------------------------------------------------

def fingerprints(limit: int | None, missing_ok: bool = False) -> dict:
    """The evaluator's (the packaged one) and the paper classifier's ``{"version", "sha256"}``; both None when the
    paper classifier is not trained yet and ``missing_ok`` (a dry run trains nothing)."""
    if missing_ok and not paper_classifier_path(0, limit).is_file():
        return {"evaluator": None, "paper": None}
    return {"evaluator": evaluator_fingerprint(), "paper": paper_fingerprint(limit=limit)}


def parse_args(argv=None) -> BenchConfig:
    p = Parser(description=__doc__.splitlines()[0])
    add_flags(p, flagged_fields(BenchConfig))
    add_flags(p, [f for f in flagged_fields(AttackConfig) if f[0] in ATTACK_FLAGS])
    args = p.parse_args(argv)
    b = dataclass_from_args(BenchConfig, args)
    b.attack = dataclass_from_args(AttackConfig, args)
    a = b.attack
    if min(b.lrs) <= 0 or min(b.k) < 0 or min(b.seeds) < 0 or b.threads < 1 or (b.limit is not None and b.limit < 1):
        p.error("--lrs must be > 0, --k and --seeds >= 0, --threads and --limit >= 1")
    if min(a.relearn_steps, a.relearn_samples, a.auc_steps, a.retain_steps, a.retain_batch, a.invert_steps,
           a.weights_points - 1) < 1 or a.invert_restarts < 0:
        p.error("the attack settings must be >= 1 (--restarts >= 0, --weights-points >= 2)")
    if not b.kinds or set(b.kinds) - set(KINDS):
        p.error(f"--kinds must be among {' '.join(KINDS)}, got {' '.join(b.kinds)}")
    return b


def dry_run(table: Table, cells: list[Cell], fps: dict, log=print) -> list[bool]:
    """Print every cell and whether it is done; returns the done marks."""
    if fps["evaluator"] is None:
        log("the paper classifier is not trained yet: no cell can be done")
    done = [fps["evaluator"] is not None and table.get(c.name, c.config) is not None for c in cells]
    for cell, d in zip(cells, done):
        log(f"{'done ' if d else 'to do'}  {cell.name}")
    log(f"{sum(done)} of {len(cells)} cells done ({table.cells_dir})")
    return done


def measure_all(ctx: Context, table: Table, cells: list[Cell], log=print) -> list[str]:
    """Every cell not done yet, written as it finishes; a cell that fails is reported and the others still run,
    except on a usage error or an interrupt (SIGINT, SIGTERM), which stop the benchmark: a killed benchmark must not
    go on to the next cell. Returns the failures."""
    failures = []
    for cell in cells:
        try:
            table.measure(cell.name, cell.config, lambda cell=cell: MEASURE[cell.kind](ctx, cell),
                          own_threads=ctx.b.threads, log=log)
        except (UsageError, Interrupted):
            raise
        except Exception as e:  # noqa: BLE001 -- a failed cell writes nothing; the next one may still work
            log(f"[{table.name}] {cell.name} failed: {type(e).__name__}: {e}")
            failures.append(cell.name)
    return failures


def write_table(table: Table, b: BenchConfig, cells: list[Cell], fps: dict) -> str:
    """OUT.json, .md and .png from the cells on disk alone; returns the markdown."""
    data, md = render([(c, table.get(c.name, c.config)) for c in cells], b, fps)
    table.write(b.out, data, md)
    frontier(data, table.dir / f"{b.out}.png")
    return md


def main(argv=None):
    b = parse_args(argv)
    plan(b, {"evaluator": None, "paper": None})  # every spec and --set value checked before anything runs
    torch.set_num_threads(b.threads)
    table = Table(TABLE, Path(b.results), commit=b.commit)
    if b.dry_run or b.render_only:
        fps = fingerprints(b.limit, missing_ok=True)
        cells = plan(b, fps)
        dry_run(table, cells, fps) if b.dry_run else print(write_table(table, b, cells, fps))
        return
    accelerator = make_accelerator(cpu=True, mixed_precision="no", threads=b.threads)
    judges = Judges(get_evaluator(accelerator, limit=b.limit)[0], get_paper_classifier(accelerator, limit=b.limit)[0])
    fps = fingerprints(b.limit)
    cells = plan(b, fps)
    failures = measure_all(Context(b, accelerator, judges), table, cells)
    print(write_table(table, b, cells, fps))
    if failures:
        sys.exit(f"error: {len(failures)} cell(s) failed: {', '.join(failures)}")


if __name__ == "__main__":
    run_main(main)
