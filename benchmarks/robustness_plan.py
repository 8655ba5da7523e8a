"""The robustness benchmark's cells: its settings (``BenchConfig``, the flags of benchmarks/robustness.py), method
specs (``NAME`` or ``NAME:sa.key=value,...``), and every cell's config: everything that shapes its result, so a
changed --forget, --epochs, --lr, --lrs, --k, --set, method setting, attack setting or evaluator is a new cell."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Optional

from cells import RESULTS, run_key
from sa_dist.attacks.suite import AttackConfig, check_draw
from sa_dist.config import RunConfig, read_yaml, validate, with_values
from sa_dist.methods import method_names
from sa_dist.utils import UsageError, arg

TABLE = "robustness"
LR_GRID = [round(10 ** (-4 + i / 3), 10) for i in range(7)]  # 3 a decade, log-even, 1e-4 to 1e-2
ATTACK_FLAGS = ("relearn_steps", "relearn_params", "relearn_start", "relearn_draw", "relearn_samples", "auc_steps",
                "retain_steps", "retain_batch", "invert_restarts", "invert_steps", "invert_penalty",
                "weights_points")  # AttackConfig's flags (and defaults) used here


KINDS = ("unlearn", "relearn", "weights", "invert")  # a model's cells, in the order they run


@dataclass
class BenchConfig:
    methods: list = arg(help="method specs: NAME or NAME:sa.key=value,... (original: θ* itself)",
                        factory=lambda: ["original", "sa", "retrain", "dampen", "noise", "distill", "distance"],
                        nargs="+", type=str)  # every method of issue #22; retrain is added when missing (the reference)
    arch: list = arg(help="architectures", factory=lambda: ["conv", "linear"], nargs="+", type=str)
    forget: list = arg(help="forget sets, each its own cells: C, or C,C forgotten together (the first attacked)",
                       factory=lambda: ["2", "0"], nargs="+", type=str)  # issue #22's two digits
    seeds: list = arg(help="seeds, each the baseline's and the unlearning's", factory=lambda: [0, 1, 2], nargs="+",
                      type=int)  # 3 seeds: a spread; those of the every-digit table, whose baselines they share
    epochs: Optional[int] = arg(None, "baseline epochs", shown="TrainConfig's")  # the default size, 50
    lr: Optional[float] = arg(None, "baseline training lr", shown="TrainConfig's")
    limit: Optional[int] = arg(None, "first N train and test images only (smoke runs)", shown="all")
    values: list = arg(help="KEY=VALUE of the run config for every cell (with_values keys, e.g. model.width=64)",
                       factory=list, nargs="+", type=str, flag="--set")
    lrs: list = arg(help="relearning Adam lrs, each compared with retrain's", factory=lambda: list(LR_GRID),
                    nargs="+", type=float)
    k: list = arg(help="real images of the class per relearning (0: retained classes only)",
                  factory=lambda: [0, 10, 50, 100], nargs="+", type=int)
    work: str = arg("runs/robustness", "folder of the unlearning runs, one per unlearn cell (named by its hash)")
    results: str = arg(str(RESULTS), "folder of the tables (the cells: RESULTS/robustness/cells/)",
                       shown="benchmarks/results")
    out: str = arg("robustness", "the rendered table: RESULTS/robustness/OUT.md, .json and .png")
    kinds: list = arg(help="cell kinds to plan: unlearn relearn weights invert (unlearn alone: a quality screen)",
                      factory=lambda: list(KINDS), nargs="+", type=str)  # all: the table's every column
    threads: int = arg(1, "torch CPU threads")  # small batches: 2 threads were 3-6x slower on shared cores
    commit: bool = arg(False, "git-commit each cell as it is written")
    dry_run: bool = arg(False, "list the cells and which are done; measure nothing")
    render_only: bool = arg(False, "render OUT from the cells on disk (not measured yet: –); measure nothing")
    attack: AttackConfig = field(default_factory=AttackConfig)  # its ATTACK_FLAGS are flags here too


@dataclass(frozen=True)
class Unit:
    """One model: an architecture, forget set, seed and method spec."""
    arch: str
    forget: tuple
    seed: int
    spec: str


@dataclass
class Cell:
    unit_name: str  # ARCH-fFORGET-sSEED-SPEC
    kind: str  # one of KINDS
    config: dict
    unit: Unit
    k: Optional[int] = None

    @property
    def name(self) -> str:
        return f"{self.unit_name}-{self.kind}" + (f"-k{self.k}" if self.kind == "relearn" else "")


OWN_FLAGS = {"model.arch": "--arch", "train.seed": "--seeds", "train.epochs": "--epochs", "train.lr": "--lr",
             "train.limit": "--limit", "sa.forget": "--forget", "sa.method": "--methods"}  # not for --set


def parse_values(items, where: str, only_sa: bool) -> dict:
    """``["key=value", ...]`` -> ``{key: YAML value}``; ``only_sa``: the keys must be ``sa.*`` (a method's own)."""
    out = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise UsageError(f"{where}: {item!r} is not key=value")
        if key in OWN_FLAGS:
            raise UsageError(f"{where}: {key} is set by {OWN_FLAGS[key]}")
        if only_sa and not key.startswith("sa."):
            raise UsageError(f"{where}: {key} is not a method setting (sa.* keys)")
        out[key] = read_yaml(raw)
    return out


def parse_spec(spec: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME:key=value,...`` -> (name, values), checked in one line."""
    name, _, rest = spec.partition(":")
    known = ("original", *method_names())
    if name not in known:
        raise UsageError(f"method spec {spec!r}: unknown method {name!r} (known: {', '.join(known)})")
    values = parse_values([v for v in rest.split(",") if v], f"method spec {spec!r}", only_sa=True)
    if name == "original" and values:
        raise UsageError(f"method spec {spec!r}: the original takes no settings")
    return name, values


def parse_forget(item: str) -> tuple:
    try:
        return tuple(int(c) for c in item.split(","))
    except ValueError:
        raise UsageError(f"--forget takes classes C or C,C; got {item!r}") from None


def run_config(b: BenchConfig, unit: Unit, with_spec: bool = True) -> RunConfig:
    """The validated run config of ``unit``; without the spec's values: the base the Fisher of θ* comes from."""
    name, spec_values = parse_spec(unit.spec)
    values = {"model.arch": unit.arch, "model.width": 0, "train.seed": unit.seed, "sa.forget": list(unit.forget),
              "train.limit": b.limit, **({"train.epochs": b.epochs} if b.epochs else {}),
              **({"train.lr": b.lr} if b.lr else {}), **parse_values(b.values, "--set", only_sa=False),
              **(spec_values if with_spec else {}), "sa.method": "sa" if name == "original" else name}
    try:
        return validate(with_values(RunConfig(), values))
    except (TypeError, ValueError) as e:
        raise UsageError(f"{unit.spec} with --set {' '.join(b.values) or '(none)'}: {e}") from None


def attack_config(b: BenchConfig, seed: int, k: int | None = None) -> AttackConfig:
    """The attack settings of one cell: the flags', the benchmark's lr grid, its k and the unit's seed."""
    return replace(b.attack, relearn_lr=list(b.lrs), relearn_k=[] if k is None else [k], seed=seed)


def slug(spec: str) -> str:
    return spec.replace(":", "@").replace(",", "+").replace("/", "_")


def unit_cells(b: BenchConfig, unit: Unit, fps: dict) -> list[Cell]:
    """The cells of one model, unlearning first: their configs hold everything that shapes them."""
    cfg = run_config(b, unit)
    base = f"{unit.arch}-f{'_'.join(map(str, unit.forget))}-s{unit.seed}-{slug(unit.spec)}"
    unlearn = {"kind": "unlearn", "spec": unit.spec, "run": run_key(asdict(cfg)), "evaluator": fps["evaluator"]}
    a = attack_config(b, unit.seed)
    cells = [Cell(base, "unlearn", unlearn, unit)]
    check_draw(replace(a, relearn_k=list(b.k)), unit.forget[0], cfg.model.n_classes)
    for k in b.k:
        budget = ({"steps": a.retain_steps, "batch": a.retain_batch} if k == 0 else {"steps": a.relearn_steps})
        moved = {"params": a.relearn_params} if a.relearn_params != "all" else {}  # "all": the keys of before
        started = {"start": a.relearn_start} if a.relearn_start != "model" else {}  # "model": the keys of before
        drawn = {"draw": a.relearn_draw} if a.relearn_draw is not None else {}  # the control: new cells
        attack = {"lrs": a.relearn_lr, "samples": a.relearn_samples, "threshold": a.threshold,
                  "auc_steps": a.auc_steps, "seed": a.seed, **budget, **moved, **started, **drawn}
        cells.append(Cell(base, "relearn", {"kind": "relearn", "k": k, "unlearn": unlearn, "attack": attack,
                                            "paper": fps["paper"], "evaluator": fps["evaluator"]}, unit, k))
    fisher = asdict(run_config(b, unit, with_spec=False).sa)
    cells.append(Cell(base, "weights", {"kind": "weights", "unlearn": unlearn, "points": a.weights_points,
                                        "fisher_of": {k: fisher[k] for k in ("n_fisher", "fisher_batch")},
                                        "evaluator": fps["evaluator"]}, unit))
    if a.invert_restarts:
        inv = {"restarts": a.invert_restarts, "steps": a.invert_steps, "lr": a.invert_lr,
               "penalty": a.invert_penalty, "seed": a.seed}
        cells.append(Cell(base, "invert", {"kind": "invert", "unlearn": unlearn, "attack": inv,
                                           "evaluator": fps["evaluator"]}, unit))
    return cells


def plan(b: BenchConfig, fps: dict) -> list[Cell]:
    """Every cell of ``--kinds``, retrain's first in each (arch, forget, seed), so ratios can be rendered early."""
    specs = list(dict.fromkeys(["retrain", *b.methods]))
    return [cell for arch in b.arch for forget in map(parse_forget, b.forget) for seed in b.seeds
            for spec in specs for cell in unit_cells(b, Unit(arch, forget, seed, spec), fps) if cell.kind in b.kinds]
