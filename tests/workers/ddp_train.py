"""Run under torchrun --nproc_per_node 2: train a few steps; every rank dumps its weights, the main process saves.

    ddp_train.py OUT_DIR [conv|linear] [sync|nosync]
"""
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed

from sa_dist.checkpoint import save_checkpoint
from sa_dist.data import loaders
from sa_dist.models import ModelConfig, build_model
from sa_dist.runtime import make_accelerator
from sa_dist.train import train_vae

out = Path(sys.argv[1])
arch = sys.argv[2] if len(sys.argv) > 2 else "conv"
sync_bn = (sys.argv[3] if len(sys.argv) > 3 else "sync") == "sync"
acc = make_accelerator(cpu=True, project_dir=str(out))
set_seed(0)
tr, te = loaders(128, seed=0, limit=1024)
model, hist = train_vae(build_model(ModelConfig(arch=arch, width=4 if arch == "conv" else 64)), tr, te, acc,
                        epochs=1, lr=1e-3, sync_bn=sync_bn)
torch.save(model.state_dict(), out / f"rank{acc.process_index}.pt")
steps = len(acc.prepare(loaders(128, seed=0, limit=1024)[0]))  # per epoch: the global batch of 128 is split
(out / f"steps{acc.process_index}.txt").write_text(str(steps))
if acc.is_main_process:
    save_checkpoint(out / "main.safetensors", model, extra={"processes": acc.num_processes, "history": hist})
acc.wait_for_everyone()
