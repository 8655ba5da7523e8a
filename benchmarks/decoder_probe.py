"""What an unlearned decoder does with a label: its output logits and how many of its ReLU activations are zero.

    python benchmarks/decoder_probe.py RUN_DIR [RUN_DIR ...] [--label 2] [--control 3] [--samples 500] [--seed 0]

For each run's unlearned.safetensors, decode ``--samples`` draws z ~ N(0, I) with the forgotten ``--label`` and with a
retained ``--control`` label, and print one JSON object per run: per label, the mean output logit, the mean pixel
(sigmoid of the logit), and for every ReLU of the decoder the share of its activations that are zero and the share of
its channels that are zero on every draw. The uniform surrogate's ideal output is logit 0 (grey); the blank one's a
very negative logit (black). A diagnostic for docs/robustness.md (where the relearning benchmark's numbers differ
between surrogates), not a test.
"""
import argparse
import json
from pathlib import Path

import torch
from torch import nn

from sa_dist.checkpoint import load_checkpoint


@torch.no_grad()
def probe(model, label: int, samples: int, seed: int) -> dict:
    """Mean logit and pixel of ``samples`` decodes with ``label``, and each decoder ReLU's zero shares."""
    z = torch.randn(samples, model.z_dim, generator=torch.Generator().manual_seed(seed))  # (B, z)
    acts = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: acts.append(out)) for m in model.dec.modules()
             if isinstance(m, nn.ReLU)]
    try:
        logits = model.decode(z, torch.full((samples,), label, dtype=torch.long))  # (B, 1, 28, 28)
    finally:
        for h in hooks:
            h.remove()
    relus = [{"zero_share": round(float(a.eq(0).float().mean()), 4),  # a: (B, C, ...) or (B, C)
              "dead_channel_share": round(float(a.flatten(2).amax(2).amax(0).eq(0).float().mean()
                                                if a.dim() > 2 else a.amax(0).eq(0).float().mean()), 4)}
             for a in acts]
    return {"mean_logit": round(float(logits.mean()), 3), "mean_pixel": round(float(torch.sigmoid(logits).mean()), 4),
            "relus": relus}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders with an unlearned.safetensors")
    p.add_argument("--label", type=int, default=2, help="the forgotten label to decode")
    p.add_argument("--control", type=int, default=3, help="a retained label, decoded the same way")
    p.add_argument("--samples", type=int, default=500, help="draws of z per label")
    p.add_argument("--seed", type=int, default=0, help="seed of the z draws (the same for every run and label)")
    args = p.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        model, _ = load_checkpoint(Path(run) / "unlearned.safetensors")
        out = {str(c): probe(model, c, args.samples, args.seed) for c in (args.label, args.control)}
        print(json.dumps({"run": str(run), "labels": out}))


if __name__ == "__main__":
    main()
