"""Measuring like the field: seeds with spread in sweeps and tables, the label -> seen-class matrix (collateral
damage), and deletion requests that arrive one after another."""
import json

import pytest
import torch

from conftest import LIMIT, run_script, sa_config
from sa_dist.amnesia import replay_dataset
from sa_dist.analysis.report import build_report
from sa_dist.cache import baseline_key, baseline_path, get_baseline, save_baseline
from sa_dist.checkpoint import forgotten_classes, read_metadata, save_checkpoint
from sa_dist.config import RunConfig
from sa_dist.evaluation.evaluator import get_evaluator
from sa_dist.evaluation.metrics import class_metrics, collateral
from sa_dist.pipeline import report_line, with_earlier_requests
from sa_dist.sweeps.aggregate import aggregate, markdown
from sa_dist.sweeps.grid import Point, make_grid
from sa_dist.utils import UsageError, write_json
from test_scripts import TINY


def test_a_seed_is_a_grid_dimension_that_sets_the_baseline_and_unlearning_seed():
    pts = make_grid(["sa", "retrain"], [(2,)], [1.0], [1.0], [49, 50])
    assert [p.name("conv") for p in pts] == ["conv-sa-forget2-lam1-gamma1-seed49", "conv-sa-forget2-lam1-gamma1-seed50",
                                             "conv-retrain-forget2-seed49", "conv-retrain-forget2-seed50"]
    cfg = pts[1].config(RunConfig())
    assert cfg.train.seed == 50 and cfg.sa_seed == 50 and pts[1].args()[-2:] == ["--seed", "50"]
    assert Point("sa", (2,), 1.0, 1.0).config(RunConfig()).train.seed == RunConfig().train.seed
    assert sa_config(**{"sa.seed": 7}).sa_seed == 7  # --sa-seed varies the unlearning alone


def _fake_run(d, seed, p, acc, nelbo, method="sa"):
    """A results.json with the blocks aggregate reads."""
    before = {"forgotten_p_class": {"2": 0.98}, "forgotten_entropy": {"2": 0.1}, "retained_sample_acc": 0.98,
              "retained_test_nelbo": 95.0}
    after = {"forgotten_p_class": {"2": p}, "forgotten_entropy": {"2": 0.2}, "retained_sample_acc": acc,
             "retained_test_nelbo": nelbo}
    write_json(d / "results.json", {
        "config": {"model": {"arch": "conv"}, "train": {"seed": seed}, "sa": {"lam": 1.0, "gamma": 1.0, "method": method}},
        "method": method, "forget_classes": [2], "summary": {"before": before, "after": after},
        "surrogate": {"nelbo": {"after": 544.0, "floor": 543.4}},
        "timing_s": {"fisher": 5.0, "unlearn": 30.0 + seed - 49, "baseline": 400.0}})


def test_aggregate_combines_seeds_into_mean_and_spread(tmp_path):
    for seed, p, acc in ((49, 0.001, 0.97), (50, 0.003, 0.98), (51, 0.002, 0.99)):
        (tmp_path / f"r{seed}").mkdir()
        _fake_run(tmp_path / f"r{seed}", seed, p, acc, 96.0)
    table = aggregate([tmp_path])
    assert len(table["runs"]) == 3 and len(table["points"]) == 1
    row = table["points"][0]
    assert row["seeds"] == [49, 50, 51] and row["forgotten_p"] == pytest.approx(0.002)
    assert row["forgotten_p_std"] == pytest.approx(0.001) and row["retained_sample_acc_std"] == pytest.approx(0.01)
    assert row["retained_acc_drop_pts"] == pytest.approx(0.0, abs=1e-9) and row["seconds"] == pytest.approx(36.0)
    md = markdown(table["points"], table["classes"])
    assert "| 0.0020 ± 0.0010 |" in md and "98.00% ± 1.00%" in md and "| sa | conv | 2 | 1 | 1 | 3 |" in md


def test_collateral_names_where_the_mass_went():
    seen = [str(k) for k in range(10)] + ["reject"]
    eye = [[1.0 if k == c else 0.0 for k in range(11)] for c in range(10)]
    after = [row[:] for row in eye]
    after[2] = [0.0] * 10 + [1.0]  # the forgotten 2 is now "not a digit"
    after[7] = [0.0] * 11
    after[7][7], after[7][1] = 0.8, 0.2  # a retained 7 lost mass to 1
    block = lambda m: {"labels": [str(c) for c in range(10)], "seen": seen, "mean_p": m}  # noqa: E731
    col = collateral(block(eye), block(after), [2])
    assert col["most_moved"][0] == "7" and col["retained"]["7"]["largest_gain"] == "1"
    assert col["retained"]["7"]["own_change"] == pytest.approx(-0.2) and col["forgotten"]["2"]["to"] == "reject"
    assert "2" not in col["retained"] and col["retained"]["3"]["own_change"] == 0


def test_class_metrics_hold_the_label_to_seen_class_matrix(tiny_baseline):
    model, _ = tiny_baseline
    evaluator, _ = get_evaluator(None, limit=LIMIT)
    x = torch.rand(20, 1, 28, 28)
    m = class_metrics(model, evaluator, x, torch.arange(20) % 10, n_samples=40)
    conf = m["confusion"]
    assert conf["labels"] == [str(c) for c in range(10)] and len(conf["mean_p"]) == 10
    assert all(abs(sum(row) - 1) < 1e-4 for row in conf["mean_p"])
    assert all(conf["mean_p"][c][c] == pytest.approx(m["per_class"][str(c)]["p_class"]) for c in range(10))


def test_a_request_on_an_unlearned_checkpoint_keeps_the_earlier_classes_forgotten(tiny_baseline, tmp_path):
    model, base = tiny_baseline
    assert forgotten_classes(base) == []
    save_checkpoint(tmp_path / "u.safetensors", model, kind="unlearned", extra={"forget": [2]})
    cfg, earlier = with_earlier_requests(sa_config(**{"sa.forget": [7]}), str(tmp_path / "u.safetensors"))
    assert earlier == [2] and cfg.sa.forget == [2, 7]
    x, c = replay_dataset(model, cfg.sa.forget, 200)[:]
    assert not set(c.tolist()) & {2, 7}  # replay holds only classes never forgotten
    with pytest.raises(UsageError, match="has forgotten it already"):
        with_earlier_requests(sa_config(**{"sa.forget": [2]}), str(tmp_path / "u.safetensors"))


def test_a_cached_retrain_model_knows_the_classes_it_never_learned(accelerator, tmp_path):
    cfg = sa_config(**{"train.limit": LIMIT, "train.epochs": 1, "model.width": 32, "sa.forget": [7]})
    model, info = get_baseline(cfg, accelerator, exclude=(2,))
    path = baseline_path(info["key"])
    assert not info["cached"] and forgotten_classes(path) == [2]
    assert info["key"] != baseline_key(cfg)  # its own cache entry, the full baseline's untouched
    again, earlier = with_earlier_requests(cfg, str(path))  # used as --checkpoint: 2 stays forgotten
    assert earlier == [2] and again.sa.forget == [2, 7]
    save_baseline(path, model, info["history"], info["seconds"], cfg)  # an entry cached before it said so
    assert "forget" not in read_metadata(path)
    _, info = get_baseline(cfg, accelerator, exclude=(2,))
    assert info["cached"] and forgotten_classes(path) == [2]  # repaired on its next use


def _request_results(earlier: list[int], request: list[int]) -> dict:
    forget = [str(c) for c in earlier + request]
    pc = {str(c): {"sample_acc": 0.9, "p_class": 0.001 if str(c) in forget else 0.9, "p_reject": 0.9,
                   "entropy": 0.1, "test_nelbo": 100.0} for c in range(10)}
    side = {"forgotten_p_class": {c: 0.001 for c in forget}, "forgotten_p_reject": {c: 0.99 for c in forget},
            "forgotten_entropy": {c: 0.1 for c in forget}, "retained_sample_acc": 0.9, "retained_test_nelbo": 100.0}
    return {"config": {"model": {"arch": "linear"}}, "forget_classes": earlier + request, "forget_request": request,
            "forgotten_before": earlier, "before": {"per_class": pc}, "after": {"per_class": pc},
            "summary": {"before": side, "after": side},
            "surrogate": {"nelbo": {"before": 900.0, "after": 544.0, "z_blind": 543.4}},
            "timing_s": {"baseline": None, "fisher": 1.0, "unlearn": 2.0, "evaluate": 3.0}}


def test_the_report_and_the_terminal_say_what_this_request_forgot_and_what_was_forgotten_before(tmp_path):
    write_json(tmp_path / "results.json", _request_results([2, 4], [7]))
    _, md = build_report(tmp_path)
    text = md.read_text()
    assert "This request forgot 7; forgotten before (by the --checkpoint model, kept forgotten): 2, 4." in text
    assert "## forget_request" not in text and "## forgotten_before" not in text  # not dumped as unknown blocks
    line = report_line(_request_results([2, 4], [7]), tmp_path)
    assert line.startswith("this request forgot 7; forgotten before (by --checkpoint): 2, 4, kept forgotten\n")
    write_json(tmp_path / "results.json", _request_results([], [3]))
    text = build_report(tmp_path)[1].read_text()
    assert "forgotten before (by the --checkpoint model, kept forgotten): none." in text
    assert "this request" not in report_line(_request_results([], [3]), tmp_path)


@pytest.mark.slow
def test_two_requests_in_a_row_with_the_script(tmp_path):
    r = run_script("scripts/unlearn.py", *TINY, "--forget", "2", "--run-dir", tmp_path / "a")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_script("scripts/unlearn.py", *TINY, "--forget", "7", "--checkpoint", tmp_path / "a" / "unlearned.safetensors",
                   "--run-dir", tmp_path / "b")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert res["forget_classes"] == [2, 7] and res["forgotten_before"] == [2] and res["forget_request"] == [7]
    assert set(res["summary"]["after"]["forgotten_p_class"]) == {"2", "7"}
    assert forgotten_classes(tmp_path / "b" / "unlearned.safetensors") == [2, 7]
    r = run_script("scripts/unlearn.py", *TINY, "--forget", "7", "--checkpoint", tmp_path / "b" / "unlearned.safetensors",
                   "--run-dir", tmp_path / "c")
    assert r.returncode == 2 and "has forgotten it already" in r.stderr and not (tmp_path / "c").exists()
