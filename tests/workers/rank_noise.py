"""Run under torchrun --nproc_per_node 2: after prepare and rank_noise, each rank saves the noise it draws and the
items of its first two shards of a prepared, shuffled loader.

    rank_noise.py OUT_DIR
"""
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed

from sa_dist.data import batch_loader
from sa_dist.runtime import make_accelerator, rank_noise

out = Path(sys.argv[1])
acc = make_accelerator(cpu=True, project_dir=str(out))
set_seed(0)
net, opt = acc.prepare(torch.nn.Linear(2, 2), torch.optim.Adam(torch.nn.Linear(2, 2).parameters()))
loader = acc.prepare(batch_loader(torch.arange(1024), batch=128, shuffle=True, seed=0))
rank_noise(acc)
shards = [b[0].tolist() for _, b in zip(range(2), loader)]
torch.save({"noise": torch.randn(1000), "shards": shards}, out / f"rank{acc.process_index}.pt")
acc.wait_for_everyone()
