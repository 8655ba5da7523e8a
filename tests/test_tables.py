"""The cell-based tables (benchmarks/digits.py, sequential.py, launchers.py): every cell keyed by its whole config
(no stale reuse when --requests, --seed or --arch change), --dry-run, and each table rendered from hand-made cells
alone, a missing cell and a loaded one among them."""
import json

import pytest
import torch

from conftest import LIMIT, load_benchmark
from sa_dist.checkpoint import save_tensors
from sa_dist.evaluation.evaluator import WEIGHTS_SHA256
from sa_dist.evaluation.paper import PaperClassifier, paper_classifier_path
from sa_dist.utils import UsageError

cells = load_benchmark("cells")
celltables = load_benchmark("celltables")
digits = load_benchmark("digits")
sequential = load_benchmark("sequential")
launchers = load_benchmark("launchers")
INST = {"evaluator": {"version": 3, "sha256": "ab" * 32}}


def put(table, item, result: dict, loaded: bool = False) -> None:
    """A finished cell of ``item`` on disk, as Table.measure writes it."""
    record = {"table": table.name, "cell": item.name, "hash": cells.config_hash(item.config), "config": item.config,
              "result": result, "wall_s": 1.0, "commit": "c0ffee", "finished": "2026-12-05T10:00:00+00:00",
              "machine": {"cpu": "test CPU", "cores": 2, "torch": "2.x"}, "loaded": loaded}
    table.path(item.name, item.config).parent.mkdir(parents=True, exist_ok=True)
    table.path(item.name, item.config).write_text(json.dumps(record))


# ---- the shared pieces ---------------------------------------------------------------------------------------------

def test_set_values_and_a_cells_arch_take_the_arch_defaults(tmp_path):
    values = celltables.parse_set(["train.limit=2000", "sa.n_fisher=500"])
    assert values == {"train.limit": 2000, "sa.n_fisher": 500}
    cfg = celltables.run_config(values, **{"model.arch": "linear"})
    assert (cfg.model.width, cfg.sa.lr, cfg.train.limit) == (512, 5e-4, 2000)  # linear's own, not conv's
    assert celltables.run_config({"model.width": 64}, **{"model.arch": "linear"}).model.width == 64
    for bad, match in ((["train.limit"], "KEY=VALUE"), (["train.nope=1"], "not a config field"),
                       (["train.limit=-3"], "--limit must be a positive integer")):
        with pytest.raises(UsageError, match=match):
            celltables.parse_set(bad)
    table = cells.Table("t", results=tmp_path)
    with pytest.raises(UsageError, match="inside the repository"):
        celltables.work_dir(cells.ROOT / "runs" / "x", table)
    assert celltables.work_dir(tmp_path / "w", table) == tmp_path / "w"


def test_spread_show_and_unquoted_seconds():
    s = celltables.spread([0.2, None, 0.1, 0.3])
    assert s == {"mean": pytest.approx(0.2), "min": 0.1, "max": 0.3, "n": 3} and celltables.spread([None]) is None
    assert celltables.show(s, ".2f") == "0.20 [0.10, 0.30]" and celltables.show(None) == "–"
    assert celltables.show(celltables.spread([1.0]), ".1f", 100, "%") == "100.0%"
    quiet, loaded, reused = ({"result": {"s": v, "run_reused": r}, "loaded": lo}
                             for v, lo, r in ((10.0, False, False), (99.0, True, False), (50.0, False, True)))
    assert celltables.show_seconds([quiet, loaded, reused], lambda c: c["result"]["s"]) == \
        "10.0 (2 loaded or reused left out)"
    assert celltables.show_seconds([loaded], lambda c: c["result"]["s"]) == "(not quoted)"
    assert celltables.show_seconds([reused], lambda c: c["result"]["s"]) == "(not quoted)"
    line = celltables.provenance([{**c, "config": {}, "machine": {"cpu": "x", "cores": 2, "torch": "t"},
                                   "commit": None, "finished": "2026-12-05T00:00:00"} for c in (quiet, loaded, reused)], 3)
    assert "3 of 3 cells measured (1 loaded, 1 read from runs made before the cell: their seconds" in line


# ---- digits ------------------------------------------------------------------------------------------------------

def fake_results(digit: int, p_after: float, acc_after: float = 0.98, nelbo_after: float = 96.0) -> dict:
    """The blocks of a results.json that digits.digit_result reads."""
    c = str(digit)
    side = lambda p, acc, nelbo: {"forgotten_p_class": {c: p}, "forgotten_p_reject": {c: 1 - p},  # noqa: E731
                                  "forgotten_entropy": {c: 0.05}, "retained_sample_acc": acc,
                                  "retained_test_nelbo": nelbo}
    return {"forget_classes": [digit], "summary": {"before": side(0.97, 0.985, 95.0),
                                                   "after": side(p_after, acc_after, nelbo_after)},
            "paper_protocol": {"per_class": {c: {"before": {"entropy": 0.1, "p_forgotten": 0.95},
                                                 "after": {"entropy": 1.3, "p_forgotten": 0.06}}}},
            "surrogate": {"kind": "uniform", "ideal": {"p_class": {c: 0.0}, "p_reject": 1.0},
                          "nelbo": {"after": 544.4, "z_blind": 543.4}},
            "timing_s": {"fisher": 5.0, "fisher_cached": False, "unlearn": 30.0, "evaluate": 8.0, "baseline": 400.0},
            "baseline": {"key": "k49", "cached": True}}


def digits_plan(tmp_path, argv=(), inst=INST):
    args = digits.parse_args(list(argv))
    table = celltables.table_for(tmp_path / "out" / args.table, args.table, False)
    return args, table, digits.plan(args, inst, tmp_path / "work")


def test_digits_cells_are_keyed_by_arch_seed_and_digit_and_run_baseline_by_baseline(tmp_path):
    args, _, items = digits_plan(tmp_path)
    assert (args.archs, args.digits, args.seeds) == (["conv", "linear"], list(range(10)), [0, 1, 2])
    assert [i.name for i in items[:11]] == [f"conv-d{d}-s0" for d in range(10)] + ["conv-d0-s1"]
    assert len(items) == 60 and len({cells.config_hash(i.config) for i in items}) == 60
    assert items[0].before is items[9].before and items[9].before is not items[10].before  # one baseline per group
    cfg = items[12].fn.args[0]  # conv, seed 1, digit 2
    assert (cfg.model.arch, cfg.train.seed, cfg.sa_seed, cfg.sa.forget, cfg.protocol) == ("conv", 1, 1, [2], "paper")
    # the run dir is named like the cell's file (its key carries the platform)
    assert items[12].fn.args[1].name == cells.Table("digits").path("conv-d2-s1", items[12].config).stem
    assert items[12].fn.args[1].name != f"conv-d2-s1-{cells.config_hash(items[12].config)}"
    assert items[12].config["evaluator"] == INST["evaluator"] and items[12].config["run"]["train"]["seed"] == 1
    other = digits_plan(tmp_path, inst={"evaluator": {"version": 4, "sha256": "cd" * 32}})[2]
    assert cells.config_hash(other[12].config) != cells.config_hash(items[12].config)  # a new evaluator re-measures
    _, _, paper = digits_plan(tmp_path, ["--table", "paper_default"])
    assert [i.name for i in paper] == ["conv-d0-s49", "conv-d2-s49"]
    for bad in (["--digits", "10"], ["--seeds", "1", "1"]):
        with pytest.raises(UsageError):
            digits.parse_args(bad)


def test_digits_table_from_hand_made_cells_with_a_missing_and_a_loaded_cell(tmp_path):
    args, table, items = digits_plan(tmp_path, ["--archs", "conv", "--digits", "2", "8", "--seeds", "0", "1"])
    by = {i.name: i for i in items}
    put(table, by["conv-d2-s0"], {**digits.digit_result(fake_results(2, 0.0004)), "run_reused": False})
    put(table, by["conv-d2-s1"], {**digits.digit_result(fake_results(2, 0.002)), "fisher_s": 99.0}, loaded=True)
    put(table, by["conv-d8-s0"], {**digits.digit_result(fake_results(8, 0.05, acc_after=0.97)), "run_reused": False})
    md = digits.render(table, items, args, "python benchmarks/digits.py ...")  # conv-d8-s1: missing
    first, second = md.split("\n\n| arch | digit | paper")  # the bars table, then the paper/seconds one
    rows = {r.split(" | ")[1]: r for r in first.splitlines() if r.startswith("| conv |")}
    assert "0.0012 [0.0004, 0.0020]" in rows["2"] and "| met | none |" in rows["2"]
    assert "missed: P(c_f), acc (incomplete: 1 of 2 seeds)" in rows["8"] and "s0: P(c_f), acc; s1: missing" in rows["8"]
    assert "| 5.0 (1 loaded or reused left out) |" in second  # the loaded cell's 99 s Fisher is never quoted
    assert "3 of 4 cells measured (1 loaded" in md and "* conv: 1 of 2 digits meet every bar" in md
    data = json.loads((table.dir / "digits.json").read_text())
    assert data["rows"][1]["missing"] == [1] and data["rows"][0]["meets_bars"] is True
    assert data["cells"]["conv-d8-s1"] is None and (table.dir / "digits.png").read_bytes()[:4] == b"\x89PNG"


def test_paper_default_sits_beside_the_official_readme_example(tmp_path):
    args, table, items = digits_plan(tmp_path, ["--table", "paper_default"])
    put(table, items[0], digits.digit_result(fake_results(0, 0.0001)))
    md = digits.render(table, items, args, "python benchmarks/digits.py --table paper_default")
    assert "| official README example, digit 0 (their model, their classifier) | – → 2.19 | – → 0.058 |" in md
    assert "| conv, forget 0, seed 49 | 0.100 → 1.300 | 0.9500 → 0.0600 | 0.0001 | 1.000 |" in md
    assert "| conv, forget 2, seed 49 (missing: 49) | – → – |" in md
    assert (table.dir / "paper_default.png").is_file()


def test_dry_run_lists_the_cells_and_which_are_done(tmp_path, monkeypatch, capsys):
    args, table, items = digits_plan(tmp_path, ["--archs", "linear", "--digits", "3", "4", "--seeds", "0"])
    put(table, items[1], {})
    lines = []
    assert celltables.dry_run(table, items, log=lines.append) == [("linear-d3-s0", False), ("linear-d4-s0", True)]
    assert lines[0] == "linear-d3-s0: to measure" and lines[1].startswith("linear-d4-s0: done (linear-d4-s0-")
    assert lines[-1] == "[digits] 1 of 2 cells done"
    monkeypatch.setenv("SA_DIST_CACHE", str(tmp_path / "empty-cache"))  # no evaluator trained here
    digits.main(["--dry-run", "--archs", "linear", "--digits", "3", "--seeds", "0", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert "linear-d3-s0: to measure" in out and "paper classifier is not trained yet" in out
    assert not (tmp_path / "o").exists()  # a dry run writes nothing


# ---- sequential ----------------------------------------------------------------------------------------------------

def seq_plan(tmp_path, requests, arch="conv", seed=49):
    base = celltables.run_config({}, **{"model.arch": arch, "train.seed": seed})
    table = celltables.table_for(tmp_path / "sequential", "sequential", False)
    return base, table, sequential.plan(base, requests, INST, table, tmp_path / "work")


def test_sequential_cells_and_run_folders_are_keyed_by_requests_arch_and_seed(tmp_path):
    _, _, items = seq_plan(tmp_path, [2, 7, 4])
    names = [i.name for i in items]
    assert names == ["original", "sequential-2", "at_once-2", "retrain-2", "sequential-2_7", "at_once-2_7",
                     "retrain-2_7", "sequential-2_7_4", "at_once-2_7_4", "retrain-2_7_4"]
    key = lambda its: {i.name: cells.config_hash(cells.cell_key(i.config)) for i in its}  # noqa: E731
    mine = key(items)
    other_third = key(seq_plan(tmp_path, [2, 7, 9])[2])
    assert all(other_third[n] == mine[n] for n in names[:7])  # the same first two requests: the same runs
    assert "sequential-2_7_9" in other_third and "sequential-2_7_4" not in other_third
    for other in (seq_plan(tmp_path, [2, 7, 4], seed=50)[2], seq_plan(tmp_path, [2, 7, 4], arch="linear")[2]):
        assert not set(key(other).values()) & set(mine.values())  # no cell (nor run folder) reused
    chain = items[7].fn.args[1]  # sequential-2_7_4 runs on the model of 2_7, which ran on that of 2
    assert [p.name for _, p in chain] == [f"{n}-{mine[n]}" for n in ("sequential-2", "sequential-2_7",
                                                                     "sequential-2_7_4")]
    assert [c.sa.forget for c, _ in chain] == [[2], [7], [4]]
    (once_cfg, _), = items[8].fn.args[1]
    (re_cfg, _), = items[9].fn.args[1]
    assert once_cfg.sa.forget == [2, 7, 4] and (re_cfg.sa.method, re_cfg.sa.forget) == ("retrain", [2, 7, 4])
    with pytest.raises(UsageError, match="distinct classes"):
        sequential.parse_args(["--requests", "2", "2"])
    assert sequential.BARS == {"forgotten_p": 0.01, "retained_acc_drop_pts": 1.0, "retained_nelbo_rise_pct": 2.0}


def seq_result(ps: dict, drop=0.1, rise=1.0, seconds=40.0) -> dict:
    row = {"forgotten_p": ps, "retained_acc": 0.98, "retained_nelbo": 96.0, "retained_acc_drop_pts": drop,
           "retained_nelbo_rise_pct": rise, "seconds": seconds, "run_reused": False}
    return {**row, "meets_bars": sequential.meets_bars(row)}


def test_sequential_table_from_hand_made_cells_with_a_missing_and_a_loaded_cell(tmp_path):
    base, table, items = seq_plan(tmp_path, [2, 7])
    by = {i.name: i for i in items}
    put(table, by["original"], {"per_class": {}, "baseline_key": "k49", "baseline_s": 400.0})
    put(table, by["sequential-2"], seq_result({"2": 0.0004}), loaded=True)
    put(table, by["at_once-2"], seq_result({"2": 0.0005}, seconds=41.0))
    put(table, by["retrain-2"], seq_result({"2": 0.02}, seconds=400.0))
    put(table, by["sequential-2_7"], seq_result({"2": 0.03, "7": 0.001}, drop=1.5))
    put(table, by["retrain-2_7"], seq_result({"2": 0.02, "7": 0.02}, seconds=390.0))
    md = sequential.render(table, items, [2, 7], base, "python benchmarks/sequential.py --requests 2 7")
    rows = [r for r in md.splitlines() if r.startswith("| 1 ") or r.startswith("| 2 ")]
    assert rows[0] == "| 1 | 2 | sequential | 2: 0.0004 | 98.00% | -0.10 | 96.00 (+1.00%) | (not quoted) | yes |"
    assert rows[1].endswith("| 41.0 | yes |") and rows[2].endswith("| 400.0 | no |")
    assert "| 2 | 2, 7 | sequential | 2: 0.0300, 7: 0.0010 |" in rows[3] and rows[3].endswith("| (not quoted) | no |")
    assert rows[4] == "| 2 | 2, 7 | at_once | missing | – | – | – | – | – |"
    assert "after request 2: sequential no, at_once –, retrain no" in md
    data = json.loads((table.dir / "sequential.json").read_text())
    assert data["steps"][0]["at_once"]["cumulative_seconds"] == 41.0 and data["must_reach"]["at_once"] is None
    assert (table.dir / "sequential.png").is_file()


# ---- launchers -----------------------------------------------------------------------------------------------------

def test_launcher_cells_round_the_launchers_and_key_on_the_command(tmp_path):
    args = launchers.parse_args(["--repeats", "2", "--", "--forget", "2"])
    cfg = launchers.unlearn_config(args.script, args.script_args)
    assert cfg.sa.forget == [2] and args.out is None and args.dry_run is False
    items = launchers.plan(args, cfg, INST, tmp_path, {})
    assert [i.name for i in items] == ["python-r1", "accelerate-r1", "torchrun-r1", "python-r2", "accelerate-r2",
                                       "torchrun-r2"]
    assert len({i.before for i in items}) == 1 and items[0].own_threads >= 1  # one warm-up for all
    quick = launchers.plan(launchers.parse_args(["--", "--quick"]), None, INST, tmp_path, {})
    assert cells.config_hash(quick[0].config) != cells.config_hash(items[0].config)


def test_launcher_table_leaves_loaded_cells_out_of_the_medians(tmp_path):
    args = launchers.parse_args(["--repeats", "3", "--launchers", "python", "accelerate", "--", "--forget", "2"])
    items = launchers.plan(args, None, INST, tmp_path / "w", {})
    table = celltables.table_for(tmp_path / "launchers", "launchers", False)
    walls = {"python-r1": (10.0, False), "python-r2": (12.0, False), "python-r3": (30.0, True),
             "accelerate-r1": (11.0, False), "accelerate-r2": (14.0, False)}  # accelerate-r3: missing
    for item in items:
        if item.name in walls:
            put(table, item, {"wall_s": walls[item.name][0], "command": item.name}, loaded=walls[item.name][1])
    md = launchers.render(table, items, args)
    data = json.loads((table.dir / "launchers.json").read_text())["launchers"]
    assert data["python"]["median_s"] == 11.0 and data["accelerate"]["ratio_to_python"] == pytest.approx(1.136)
    assert data["accelerate"]["within_bar"] is False and data["python"]["within_bar"] is True
    assert "| 10.0, 12.0, 30.0 (loaded) | 11.0 | 1.00 | yes |" in md
    assert "| 11.0, 14.0, missing | 12.5 | 1.14 | no |" in md


# ---- end to end --------------------------------------------------------------------------------------------------

def fake_instruments() -> None:
    """An untrained paper classifier in the cache (the evaluator is the packaged one): the plumbing, not the
    numbers, is under test."""
    torch.manual_seed(0)
    save_tensors(paper_classifier_path(limit=LIMIT), PaperClassifier().state_dict(),
                 {"kind": "paper_classifier", "version": 0, "test_acc": 0.0, "seconds": 0.0})


@pytest.mark.slow
def test_digits_end_to_end_tiny_then_a_rerun_measures_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SA_DIST_CACHE", str(tmp_path / "cache"))
    fake_instruments()
    argv = ["--archs", "linear", "--digits", "2", "--seeds", "0", "--out", str(tmp_path / "digits"), "--work",
            str(tmp_path / "work"), "--set", f"train.limit={LIMIT}", "train.epochs=1", "model.width=32",
            "sa.n_fisher=200", "sa.sa_epochs=1", "sa.n_replay=512", "eval_samples=20"]
    digits.main(argv)
    first = capsys.readouterr().out
    cell, = (tmp_path / "digits" / "cells").glob("linear-d2-s0-*.json")
    run, = (tmp_path / "work").iterdir()
    assert run.name == cell.stem and (run / "results.json").is_file()
    rec = json.loads(cell.read_text())
    assert rec["config"]["run"]["train"]["limit"] == LIMIT and set(rec["config"]) >= {"evaluator", "paper_classifier"}
    assert rec["config"]["evaluator"] == {"version": 3, "sha256": WEIGHTS_SHA256}  # the packaged instrument
    assert rec["result"]["run_reused"] is False and 0 <= rec["result"]["paper_p_after"] <= 1
    assert "| linear | 2 | 1 |" in first and (tmp_path / "digits" / "digits.png").is_file()
    digits.main(argv)
    assert "measured before" in capsys.readouterr().out and json.loads(cell.read_text()) == rec
