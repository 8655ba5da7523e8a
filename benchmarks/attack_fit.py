"""How well does each model fit the forgotten class again after a few steps of the ``tar`` method's simulated attack?

For each model, the ``tar`` method's ``RelearnAdversary`` fine-tunes a copy (every weight, Adam, started as
``--start`` says) for ``--steps`` steps on ``--k`` images of the forgotten class: θ*'s own samples (``--images
samples``, what ``tar`` fits) or real training images (``real``, what the benchmark's attacker fits). It then scores
fresh samples of θ*: their negative ELBO at the label, over θ*'s own negative ELBO of them (``ratio``), and the
attacked model's own posterior of the label for them, its ELBOs over all labels read as a Bayes classifier
(``label_p``); and what the relearning benchmark judges, the project evaluator's P of the class on the attacked
model's decoder means at 500 prior latents under the label (``judge_p``); means over ``--repeats`` draws. A model
that relearns like the retrained one sits at the retrained model's values; the ``tar`` method's cap is (1 + margin)
in the ratio's units (``--tar-score nelbo``) or ``--tar-p`` in the posterior's (``--tar-score label``). Prints JSON;
a diagnostic, not a test.

    python benchmarks/attack_fit.py THETA_STAR.safetensors RUN/unlearned.safetensors ... --forget 2
    python benchmarks/attack_fit.py ... --start model --images real --k 10 --lr 1e-4 --steps 140
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

import torch

from sa_dist.attacks.relearn import p_target
from sa_dist.attacks.suite import target_images
from sa_dist.checkpoint import load_checkpoint
from sa_dist.config import TAR_STARTS, RunConfig, SAConfig
from sa_dist.evaluation.evaluator import get_evaluator
from sa_dist.methods.tar import RelearnAdversary
from sa_dist.models import label_log_odds, negative_elbo
from sa_dist.runtime import make_accelerator
from sa_dist.utils import UserError


def attack_fit(theta_star, model, a, accelerator, evaluator) -> dict:
    """Means over ``a.repeats`` draws: ``ratio``, (nELBO of θ*'s held-out samples after the attack) / (θ*'s own),
    ``label_p``, the attacked model's own posterior of their label, and ``judge_p``, ``evaluator``'s P of the
    first forgotten class on the attacked model's samples of it."""
    out = {"ratio": [], "label_p": [], "judge_p": []}
    for rep in range(a.repeats):
        adv = RelearnAdversary(a.forget, steps=a.steps, lr=a.lr, k=a.k, every=1, weight=0.0, margin=0.0,
                               start=a.start, batch=a.batch, seed=a.seed + rep)
        adv.start(theta_star, accelerator)
        gen = adv.generator(0)
        x, c = adv.targets(gen, a.k)
        if a.images == "real":  # the benchmark's attacker: real images of the first forgotten class
            x = target_images(RunConfig(), a.forget[0], a.k, a.seed + rep).to(x.device)
            c = torch.full((a.k,), a.forget[0], device=x.device)
        held, held_c = adv.targets(gen)
        own = adv.own_nelbo(held, held_c, gen)
        adv.attack(model, x, c, gen, a.start)
        with torch.no_grad():
            eps = adv._noise(len(held), gen)
            out["ratio"].append(negative_elbo(adv.scratch, held, held_c, eps).mean().item() / own)
            out["label_p"].append(torch.sigmoid(label_log_odds(adv.scratch, held, held_c, eps)).mean().item())
            out["judge_p"].append(p_target(adv.scratch, evaluator, adv._noise(500, gen), a.forget[0]))
    return {key: round(sum(v) / len(v), 4) for key, v in out.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("theta_star", help="θ*'s checkpoint (the baseline every model was unlearned from)")
    p.add_argument("models", nargs="+", help="checkpoints to probe (θ* may be named again)")
    p.add_argument("--forget", type=int, nargs="+", default=[2], help="the forgotten classes (default 2)")
    tar = SAConfig()  # the method's own defaults: one source
    p.add_argument("--steps", type=int, default=tar.tar_steps, help=f"attack steps (default tar's {tar.tar_steps})")
    p.add_argument("--lr", type=float, default=tar.tar_lr, help=f"the attack's Adam lr (default tar's {tar.tar_lr:g})")
    p.add_argument("--k", type=int, default=tar.tar_k, help=f"θ* samples the attack fits (default tar's {tar.tar_k})")
    p.add_argument("--start", default="label-mean", choices=[s for s in TAR_STARTS if s != "both"],
                   help="the attack's start (default label-mean)")
    p.add_argument("--images", default="samples", choices=["samples", "real"],
                   help="the attack's images: θ*'s samples (tar's, default) or real training images (the benchmark's)")
    p.add_argument("--batch", type=int, default=256, help="held-out samples scored (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="draws averaged (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and noise (default 0)")
    a = p.parse_args(argv)
    if min(a.steps, a.k, a.batch, a.repeats) < 1 or not a.lr > 0:
        raise SystemExit("attack_fit.py: error: --steps, --k, --batch, --repeats must be >= 1 and --lr > 0")
    torch.manual_seed(a.seed)
    with contextlib.redirect_stdout(sys.stderr):  # its thread-count line: stdout holds the JSON alone
        acc = make_accelerator(cpu=True)
    try:
        theta = load_checkpoint(a.theta_star)[0].requires_grad_(False)
        evaluator = get_evaluator(acc, device=acc.device)[0]
        out = {k: getattr(a, k) for k in ("steps", "lr", "k", "start", "images", "forget", "repeats")}
        out["models"] = {path: attack_fit(theta, load_checkpoint(path)[0], a, acc, evaluator) for path in a.models}
    except UserError as e:
        raise SystemExit(f"attack_fit.py: error: {e}") from None
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
