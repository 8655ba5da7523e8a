"""The distill method: the shrink-perturb formula on a tiny model, the student trained on the teacher's
generations (no real data), the retained bar's early stop, and what Outcome.info records."""
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import sa_config
from sa_dist.fisher import diag_fisher
from sa_dist.methods import Context, get_method
from sa_dist.methods.distill import distill, holdout_nelbo, shrink_perturb, teacher_batch
from sa_dist.models import ModelConfig, build_model
from sa_dist.utils import UsageError

# a short student run: the bar checked every 5 steps of 32 teacher samples, on 200 held-out ones
SHORT = {"sa.distill_steps": 20, "sa.distill_every": 5, "sa.distill_batch": 32, "sa.distill_holdout": 200}


def _tiny():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="linear", width=16))
    with torch.no_grad():
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b.add_(0.25)  # running statistics unlike a fresh model's
    return model.eval()


def _fresh(seed):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="linear", width=16)).state_dict()


def test_shrink_perturb_at_alpha_zero_is_the_teacher_and_at_one_has_no_teacher_weight_left():
    teacher = _tiny()
    same = shrink_perturb(teacher, 0.0, 1.0, seed=5)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in same.state_dict().items())
    fresh, gone = _fresh(5), shrink_perturb(teacher, 1.0, 0.7, seed=5)
    torch.manual_seed(99)  # xi comes from the seed alone, whatever the global random state
    assert torch.equal(shrink_perturb(teacher, 1.0, 0.7, seed=5).enc[0].weight, gone.enc[0].weight)
    for name, v in gone.state_dict().items():
        if name.endswith("bias"):
            assert (v == 0).all(), name  # biases are only shrunk: (1 - 1) b
        elif name.endswith("num_batches_tracked"):
            assert torch.equal(v, teacher.state_dict()[name])
        elif name in dict(gone.named_parameters()):
            assert torch.equal(v, 0.7 * fresh[name]), name  # beta * xi, nothing of the teacher
        else:
            assert torch.equal(v, fresh[name]), name  # running statistics: the fresh model's
    assert not torch.equal(shrink_perturb(teacher, 1.0, 1.0, seed=6).dec_out.weight, gone.dec_out.weight / 0.7)


def test_shrink_perturb_mixes_weights_and_only_shrinks_biases():
    teacher, alpha, beta = _tiny(), 0.3, 0.5
    fresh, out = _fresh(2), shrink_perturb(teacher, alpha, beta, seed=2)
    for (name, p), (_, q) in zip(teacher.named_parameters(), out.named_parameters()):
        if name.endswith("bias"):
            assert torch.equal(q, p * (1 - alpha)), name
        else:
            assert torch.allclose(q, (1 - alpha) * p + alpha * beta * fresh[name], atol=1e-7), name


def test_teacher_batch_draws_every_asked_label_and_its_decoder_means(tiny_baseline):
    model = tiny_baseline[0]
    z, c, x = teacher_batch(model, 300, [1, 4], torch.Generator().manual_seed(0), "cpu")
    assert z.shape == (300, model.z_dim) and set(c.tolist()) == {1, 4} and x.shape == (300, 1, 28, 28)
    assert torch.allclose(x, torch.sigmoid(model.decode(z, c)))


def test_the_bar_stops_early_when_met_and_never_when_unmeetable(tiny_baseline, accelerator):
    model = tiny_baseline[0]
    cfg = sa_config(**SHORT, **{"sa.distill_alpha": 0.1, "sa.distill_bar": 10.0})  # within 1000%: met at once
    _, history, info = distill(model, cfg, accelerator)
    assert info["stopped_on_bar"] and info["steps"] == len(history) == 5 and len(info["checks"]) == 1
    assert info["student_holdout_nelbo"] <= 11 * info["teacher_holdout_nelbo"]
    cfg = sa_config(**SHORT, **{"sa.distill_alpha": 1.0, "sa.distill_bar": 0.0})  # a fresh student, 20 steps
    student, history, info = distill(model, cfg, accelerator)
    assert not info["stopped_on_bar"] and info["steps"] == len(history) == 20
    assert [c["step"] for c in info["checks"]] == [5, 10, 15, 20]
    assert info["student_holdout_nelbo"] > info["teacher_holdout_nelbo"]
    assert history[-1]["nelbo"] < history[0]["nelbo"]  # the student learns the teacher's samples
    assert not student.training and set(history[0]) == {"step", "nelbo", "loss"}  # no matching term by default


def test_decoder_matching_adds_its_weighted_term(tiny_baseline, accelerator):
    cfg = sa_config(**{**SHORT, "sa.distill_steps": 3, "sa.distill_match": 0.5, "sa.distill_bar": 0.0})
    _, history, _ = distill(tiny_baseline[0], cfg, accelerator)
    row = history[0]
    assert row["match"] > 0 and row["loss"] == pytest.approx(row["nelbo"] + 0.5 * row["match"], rel=1e-5)


def test_distill_runs_sa_then_the_student_and_records_both(tiny_baseline, accelerator, tmp_path):
    model = tiny_baseline[0]
    fisher = diag_fisher(model, 200, seed=0, batch=200, accelerator=accelerator, progress=False)
    cfg = sa_config(**SHORT, **{"sa.method": "distill", "sa.sa_epochs": 1, "sa.n_replay": 512, "sa.distill_alpha": 0.2})
    method = get_method("distill")
    assert method.needs_fisher and method.doc.startswith("distill: ")
    out = method.unlearn(Context(cfg, model, fisher, accelerator, log_dir=tmp_path))
    info = out.info
    assert {"alpha", "beta", "steps", "stopped_on_bar", "teacher_holdout_nelbo", "student_holdout_nelbo"} <= set(info)
    assert info["alpha"] == 0.2 and info["beta"] == 1.0 and info["steps"] == len(out.history) <= 20
    assert info["seconds"]["sa"] > 0 and info["seconds"]["distill"] > 0 and info["sa_last"]["step"] == 4
    assert info["stopped_on_bar"] == (info["student_holdout_nelbo"] <= 1.02 * info["teacher_holdout_nelbo"])
    assert type(out.model) is type(model) and not out.sa_terms
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    student_gap = (out.model.sample(200, 2, generator=gen()) - 0.5).abs().mean().item()
    original_gap = (model.sample(200, 2, generator=gen()) - 0.5).abs().mean().item()
    assert student_gap < original_gap  # label 2 stays forgotten: closer to SA's grey than theta*'s digit
    tags = EventAccumulator(str(tmp_path / "distill")).Reload().Tags()["scalars"]
    assert {"distill/nelbo", "distill/loss", "distill/holdout_nelbo"} <= set(tags)
    held = (torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 3, 4]), torch.zeros(4, model.z_dim))
    assert holdout_nelbo(out.model, held, chunk=3) > 0 and not out.model.training


@pytest.mark.parametrize("values,match", [({"sa.distill_alpha": 1.5}, r"--distill-alpha must be in \[0, 1\]"),
                                          ({"sa.distill_beta": -1.0}, "--distill-beta must be a finite number >= 0"),
                                          ({"sa.distill_every": 0}, "--distill-every must be a positive integer"),
                                          ({"sa.distill_lr": 0.0}, "--distill-lr must be a positive number")])
def test_bad_distill_settings_are_one_line_usage_errors(values, match):
    with pytest.raises(UsageError, match=match):
        sa_config(**values)
    assert sa_config().sa.distill_lr == sa_config().train.lr  # unset: the baseline's lr
