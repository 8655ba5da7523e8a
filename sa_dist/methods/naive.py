"""naive: gradient ascent on the real training images of the forgotten classes (maximise their negative ELBO),
nothing else: the paper's cautionary baseline. Expected to wreck the model, so it runs on a bounded budget: as many
steps as SA (``sa_epochs * ceil(n_replay / batch)``), batches of ``batch`` forgotten-class images, SA's lr, the
gradient norm clipped to ``MAX_GRAD_NORM``. A non-finite loss, gradient or weight stops it; the last finite weights
are kept and results.json's ``method_info.stopped`` says where and why.

Under fp16 a GradScaler multiplies the loss; its normal first steps overflow, the (unscaled) gradient norm is then
inf and the scaler skips the update and lowers its scale. Such a step is not divergence: it is counted
(``method_info.scaler_skipped_steps``) and the run goes on; ``MAX_SKIPPED`` skipped steps in a row stop it."""
import math

import torch

from ..data import batch_loader, load_mnist
from accelerate.utils import set_seed

from ..models import negative_elbo, plain_copy
from ..runtime import rank_noise, start_tracking, stop_tracking, wrap_model
from . import Context, Outcome

USES = ()
MARKER = "X"
MAX_GRAD_NORM = 1000.0
MAX_SKIPPED = 20  # fp16 overflows in a row before the run counts as diverged (the scale has fallen by 2**20)


def _forget_images(cfg):
    x, y = load_mnist(True, cfg.data_dir, cfg.train.limit)
    keep = torch.isin(y, torch.tensor(cfg.sa.forget))
    return x[keep], y[keep]


def _cycle(loader):
    while True:
        yield from loader


def _all_finite(net) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in net.parameters()]).all())  # one device sync


def _scaler_skipped(acc, opt) -> bool:
    """Step through the GradScaler on an overflowing gradient; True when it skipped the update (its scale fell)."""
    scaler = getattr(acc, "scaler", None)
    if scaler is None:
        return False
    before = scaler.get_scale()
    opt.step()  # the scaler sees the inf, skips the update and backs its scale off
    return scaler.get_scale() < before


def unlearn(ctx: Context) -> Outcome:
    cfg, acc, s = ctx.cfg, ctx.accelerator, ctx.cfg.sa
    budget = s.sa_epochs * math.ceil(s.n_replay / s.batch)
    set_seed(cfg.sa_seed)  # the reparameterisation noise, as SA seeds it
    x, y = _forget_images(cfg)
    loader = batch_loader(x, y, batch=min(s.batch, len(x)), shuffle=True, seed=cfg.sa_seed, drop_last=True)
    net = wrap_model(acc, plain_copy(ctx.original).requires_grad_(True))
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)
    net, opt, loader = acc.prepare(net, opt, loader)
    rank_noise(acc, cfg.sa_seed)
    inner = acc.unwrap_model(net)
    if ctx.log_dir is not None:
        start_tracking(acc, ctx.log_dir, "naive")
    net.eval()  # batch norm frozen, as in SA
    history, stopped, skipped, in_a_row = [], None, 0, 0
    good = {k: v.detach().clone() for k, v in inner.state_dict().items()}  # the last finite weights
    for step, (xb, cb) in zip(range(1, budget + 1), _cycle(loader)):
        nelbo = negative_elbo(net, xb, cb).mean()
        opt.zero_grad(set_to_none=True)
        acc.backward(-nelbo)  # ascent: maximise the forgotten images' negative ELBO
        gnorm = acc.clip_grad_norm_(net.parameters(), MAX_GRAD_NORM)
        nl, gn = nelbo.item(), float(gnorm)
        bad = torch.tensor([float(not math.isfinite(nl)), float(not math.isfinite(gn))], device=acc.device)
        loss_bad, grad_bad = acc.reduce(bad, reduction="max").tolist()  # every rank decides alike
        if not loss_bad and grad_bad and _scaler_skipped(acc, opt):
            skipped, in_a_row = skipped + 1, in_a_row + 1
            if in_a_row < MAX_SKIPPED:
                continue
            stopped = {"step": step, "reason": f"the gradient overflowed on {MAX_SKIPPED} steps in a row"}
            break
        if loss_bad or grad_bad:
            stopped = {"step": step, "reason": f"non-finite loss or gradient (nELBO {nl})"}
            break
        opt.step()
        in_a_row = 0
        if not _all_finite(inner):
            stopped = {"step": step, "reason": "non-finite weights after the update"}
            break
        for k, v in inner.state_dict().items():
            good[k].copy_(v)
        row = {"step": step, "forget_nelbo": nl, "grad_norm": gn}
        history.append(row)
        acc.log({"naive/forget_nelbo": row["forget_nelbo"], "naive/grad_norm": row["grad_norm"]}, step=step)
    if ctx.log_dir is not None:
        stop_tracking(acc)
    inner.load_state_dict(good)
    info = {"budget_steps": budget, "steps": len(history), "stopped": stopped, "max_grad_norm": MAX_GRAD_NORM,
            "forget_images": len(x), "lr": s.lr, "scaler_skipped_steps": skipped}
    return Outcome(plain_copy(inner), history, info=info)
