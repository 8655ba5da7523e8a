"""SA's fourth term (``selective_amnesia(extra_term=)``), as the ``adversary`` and ``tar`` methods use it: logged,
counted in the loss, exactly SA at weight 0, and resumed bit for bit after SIGINT."""
import pytest
import torch

from conftest import sa_config
from sa_dist.amnesia import selective_amnesia
from sa_dist.resume import Checkpointer, Interrupted
from sa_dist.runtime import make_accelerator
from test_adversary import _adversary
from test_tar import _tar

TERMS = {"adversary": (_adversary, {}, ("adversary_fit", "adversary_ascent")),
         "tar": (_tar, {"every": 3}, ("tar_fit", "tar_after"))}  # every 3: the rows between attacks resume too


@pytest.mark.parametrize("method", TERMS)
def test_sa_with_the_term_logs_it_and_weight_zero_is_sa_exactly(tiny_baseline, accelerator, method):
    make, kw, (fit, ascent) = TERMS[method]
    model, _ = tiny_baseline
    ones = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    cfg = sa_config(**{"sa.sa_epochs": 1, "sa.n_replay": 512})
    plain, _ = selective_amnesia(model, ones, accelerator, cfg)
    off, _ = selective_amnesia(model, ones, accelerator, cfg, extra_term=make(model, accelerator, weight=0.0))
    on, hist = selective_amnesia(model, ones, accelerator, cfg, extra_term=make(model, accelerator, weight=1.5))
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), off.parameters()))
    assert not all(torch.allclose(a, b) for a, b in zip(plain.parameters(), on.parameters()))
    row = hist[-1]
    assert {fit, ascent} <= set(row) and "weighted" not in row
    assert row["loss"] == pytest.approx(row["surrogate_nelbo"] + row["replay_nelbo"] + row["ewc"]
                                        - 1.5 * row[ascent], rel=1e-5)


@pytest.mark.parametrize("method", TERMS)
def test_sa_with_the_term_resumed_after_sigint_is_bit_identical(tiny_baseline, tmp_path, monkeypatch, method):
    """The term's state (the adversary's slices and Adam state; tar's cap and last row) goes into the SA state: a
    resumed run takes the same steps and logs the same rows."""
    make, kw, (fit, _) = TERMS[method]
    model, _ = tiny_baseline
    ones = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    cfg = sa_config(**{"sa.sa_epochs": 2, "sa.n_replay": 512})

    def run(state=None):
        accelerator = make_accelerator(cpu=True, project_dir=str(tmp_path))  # one per run, as a process has
        ckpt = Checkpointer(accelerator, state, "sa") if state else None
        return selective_amnesia(model, ones, accelerator, cfg, checkpointer=ckpt,
                                 extra_term=make(model, accelerator, **kw))

    want, want_hist = run()
    monkeypatch.setenv("SA_DIST_FAULT", "sigint@sa:2")
    with pytest.raises(Interrupted):
        run(tmp_path / "st")
    monkeypatch.delenv("SA_DIST_FAULT")
    got, hist = run(tmp_path / "st")
    assert all(torch.equal(a, b) for a, b in zip(want.parameters(), got.parameters()))
    assert [h[fit] for h in hist] == [h[fit] for h in want_hist]
