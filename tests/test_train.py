import torch
from accelerate.utils import set_seed

from conftest import LIMIT
from sa_dist.data import loaders
from sa_dist.models import ModelConfig, build_model
from sa_dist.train import train_vae


def _train(accelerator, log_dir=None, seed=3):
    set_seed(seed)
    tr, te = loaders(200, seed=seed, limit=LIMIT)
    return train_vae(build_model(ModelConfig(arch="conv", width=4)), tr, te, accelerator, epochs=2, lr=2e-3,
                     log_dir=log_dir, config={"note": "test"})


def test_training_lowers_the_test_nelbo_and_logs_to_tensorboard(accelerator, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, history = _train(accelerator, tmp_path)
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["test_nelbo"] < history[0]["test_nelbo"] < 543.5  # below the flat-grey decoder
    acc = EventAccumulator(str(tmp_path / "baseline"), size_guidance={"images": 0})
    acc.Reload()
    assert {"baseline/train_nelbo", "baseline/test_nelbo"} <= set(acc.Tags()["scalars"])
    logged = [e.value for e in acc.Scalars("baseline/test_nelbo")]
    assert logged == [torch.tensor(h["test_nelbo"]).float().item() for h in history]
    assert "baseline/samples" in acc.Tags()["images"]
    assert not model.training and type(model).__name__ == "ConvCVAE"


def test_same_seed_same_numbers_on_cpu(accelerator):
    a, ha = _train(accelerator)
    b, hb = _train(accelerator)
    assert ha[-1]["train_nelbo"] == hb[-1]["train_nelbo"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c, hc = _train(accelerator, seed=4)
    assert hc[-1]["train_nelbo"] != ha[-1]["train_nelbo"]


def test_retrain_baseline_never_sees_the_excluded_class_and_is_cached_apart(accelerator, monkeypatch):
    """``exclude`` (the ``retrain`` reference) trains without the class, under its own cache key."""
    import sa_dist.train as train
    from sa_dist.cache import baseline_key, get_baseline
    from sa_dist.config import RunConfig, TrainConfig

    cfg = RunConfig(model=ModelConfig(arch="linear", width=32), train=TrainConfig(epochs=1, limit=500))
    seen = []
    real_loaders = train.loaders

    def spy(*args, **kwargs):
        tr, te = real_loaders(*args, **kwargs)
        seen.extend(int(c) for loader in (tr, te) for _, y in loader for c in y.unique())
        return tr, te

    monkeypatch.setattr(train, "loaders", spy)
    _, info = get_baseline(cfg, accelerator, exclude=(2,))
    assert not info["cached"] and 2 not in seen and set(seen) == set(range(10)) - {2}
    assert info["key"] != baseline_key(cfg) and info["key"] == baseline_key(cfg, (2,))
    _, again = get_baseline(cfg, accelerator, exclude=(2,))
    assert again["cached"] and again["key"] == info["key"]
