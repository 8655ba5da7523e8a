"""The diagonal Fisher information of a trained cVAE, exact per-sample and sharded across processes.

Selective Amnesia's EWC term needs F_i = E[(d/dtheta_i log p(x | c))^2], estimated with the per-sample negative
ELBO on samples the model generates itself: c uniform over the classes, z ~ N(0, I), x = sigmoid(decode(z, c)).
Squaring must happen per sample (the square of a batch gradient is a different, wrong quantity), so the obvious
recipe is one backward per sample (``sum_sq_grads_loop``). ``sum_sq_grads`` gets the same numbers from one
batched backward: every parameter-holding layer's weight gradient is a sum over samples of a product of its input
and its output gradient, so the per-sample pieces can be squared and summed layer by layer.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .models import negative_elbo
from .runtime import check_device, exact_float32

BLOCK = 100  # samples are drawn in fixed blocks of this many, each from its own generator
_CHUNK_ELEMS = 1 << 20  # cap on the unfolded windows and per-sample gradients held at once


def _block_generator(seed: int, k: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + k) % (1 << 63))


@torch.no_grad()
def fisher_batch(model: nn.Module, seed: int, start: int, count: int, classes=None):
    """The Fisher samples with global indices [start, start + count): ``x`` (count, 1, 28, 28), labels ``c``
    (count,) and reparameterisation noise ``eps`` (count, z), on the model's device, x and eps in its dtype.
    ``classes``: draw labels uniformly from these classes only (default: all of the model's classes).

    Index i belongs to block k = i // BLOCK, drawn whole from a CPU generator seeded from (seed, k) and decoded
    on its own, so a sample depends only on (model, seed, i): never on how indices are split into batches or
    across processes. ``start`` and ``count`` are arbitrary; blocks cut by the range are drawn whole and sliced.
    """
    if start < 0 or count < 1:
        raise ValueError(f"fisher_batch needs start >= 0 and count >= 1, got {start} and {count}")
    p = next(model.parameters())
    xs, cs, es = [], [], []
    with _eval_mode(model):
        for k in range(start // BLOCK, (start + count - 1) // BLOCK + 1):
            g = _block_generator(seed, k)
            z = torch.randn(BLOCK, model.z_dim, generator=g)  # (BLOCK, z)
            c = torch.randint(0, model.n_classes, (BLOCK,), generator=g) if classes is None else \
                torch.tensor(list(classes))[torch.randint(len(classes), (BLOCK,), generator=g)]  # (BLOCK,)
            eps = torch.randn(BLOCK, model.z_dim, generator=g)  # (BLOCK, z)
            x = torch.sigmoid(model.decode(z.to(p.device, p.dtype), c.to(p.device)))  # (BLOCK, 1, 28, 28)
            lo, hi = max(start - k * BLOCK, 0), min(start + count - k * BLOCK, BLOCK)
            xs.append(x[lo:hi])
            cs.append(c[lo:hi])
            es.append(eps[lo:hi])
    return torch.cat(xs), torch.cat(cs).to(p.device), torch.cat(es).to(p.device, p.dtype)


# Per-layer sums of squared per-sample gradients: ``a`` is the layer's input, ``d`` the loss gradient at its output.


def _sum_sq_outer(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """sum_b (left_b @ right_b^T)^2 for left (B, M, P), right (B, N, P): (M, N)."""
    B, M, P = left.shape
    N = right.shape[1]
    if P == 1:  # each per-sample product is an outer product u v^T, and (u v^T)^2 = u^2 (v^2)^T
        return left[:, :, 0].square().t() @ right[:, :, 0].square()  # (M, N)
    out = left.new_zeros(M, N)
    step = max(1, _CHUNK_ELEMS // (M * N))
    for s in range(0, B, step):
        g = torch.bmm(left[s:s + step], right[s:s + step].transpose(1, 2))  # (b, M, N) per-sample gradients
        out += g.square_().sum(0)
    return out


def _linear(m: nn.Linear, a, d):
    a, d = a.reshape(a.shape[0], -1, a.shape[-1]), d.reshape(d.shape[0], -1, d.shape[-1])  # (B, T, in), (B, T, out)
    return {"weight": _sum_sq_outer(d.transpose(1, 2), a.transpose(1, 2)),  # (out, in)
            "bias": d.sum(1).square().sum(0)}  # (out,)


def _unfold(t: torch.Tensor, m) -> torch.Tensor:
    """The kernel windows of ``t`` (B, C, H, W) in ``m``'s conv geometry: (B, C*kh*kw, P), as ``F.unfold``
    gives them (its CPU im2col took ~2 s on a (250, 11, 28, 28) input with torch 2.14 here; this copy ~0.1 s)."""
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = m.kernel_size, m.dilation, m.padding, m.stride
    t = F.pad(t, (pw, pw, ph, ph))
    win = t.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)  # (B, C, Ho, Wo, span_h, span_w)
    win = win[..., ::dh, ::dw]  # (B, C, Ho, Wo, kh, kw)
    B, C, Ho, Wo = win.shape[:4]
    return win.permute(0, 1, 4, 5, 2, 3).reshape(B, C * kh * kw, Ho * Wo)


def _conv(m, a, d):
    """Conv2d or ConvTranspose2d, in chunks of samples whose unfolded windows stay cache-sized (2x faster on CPU
    than one big unfold)."""
    if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise NotImplementedError(f"fisher: {type(m).__name__} with groups={m.groups}, padding={m.padding!r}, "
                                  f"padding_mode={m.padding_mode!r} is not supported (need groups=1, zero padding)")
    transposed = isinstance(m, nn.ConvTranspose2d)
    weight = a.new_zeros(m.weight.shape)
    positions = (a if transposed else d)[0, 0].numel()  # where the kernel is applied: input of a transposed conv
    step = max(1, _CHUNK_ELEMS // (m.weight[0].numel() * positions))
    for s in range(0, len(a), step):
        a_, d_ = a[s:s + step], d[s:s + step]
        if transposed:  # the adjoint of a conv with the same geometry: unfolding its output gradient lines up,
            # for each input position, the O*kh*kw outputs that position's weights touch
            weight += _sum_sq_outer(a_.flatten(2), _unfold(d_, m)).view_as(weight)  # (I, O, kh, kw)
        else:
            weight += _sum_sq_outer(d_.flatten(2), _unfold(a_, m)).view_as(weight)  # (O, C, kh, kw)
    return {"weight": weight, "bias": d.sum((2, 3)).square().sum(0)}  # bias: (O,)


def _batch_norm(m: nn.modules.batchnorm._BatchNorm, a, d):
    if m.training or m.running_mean is None:
        raise NotImplementedError(f"fisher: {type(m).__name__} must be in eval mode with running stats, "
                                  "or samples are not independent")
    shape = (1, -1) + (1,) * (a.dim() - 2)
    xhat = (a - m.running_mean.view(shape)) * torch.rsqrt(m.running_var.view(shape) + m.eps)  # like a
    d, xhat = d.reshape(*d.shape[:2], -1), xhat.reshape(*xhat.shape[:2], -1)  # (B, C, positions)
    return {"weight": (d * xhat).sum(2).square().sum(0),  # (C,)
            "bias": d.sum(2).square().sum(0)}  # (C,)


_RULES = ((nn.Linear, _linear), ((nn.Conv2d, nn.ConvTranspose2d), _conv),
          (nn.modules.batchnorm._BatchNorm, _batch_norm))


def _layers(model: nn.Module):
    """(name prefix, module, rule) for every module that holds parameters; an unknown one is an error."""
    out, owned = [], []
    for name, m in model.named_modules():
        own = [n for n, _ in m.named_parameters(recurse=False)]
        if not own:
            continue
        rule = next((r for t, r in _RULES if isinstance(m, t)), None)
        if rule is None or not set(own) <= {"weight", "bias"}:
            raise NotImplementedError(f"fisher: no per-sample gradient rule for {type(m).__name__} "
                                      f"'{name}' (parameters {own}); supported: Linear, Conv2d, "
                                      "ConvTranspose2d, BatchNorm in eval mode")
        out.append((name + "." if name else "", m, rule))
        owned += [id(p) for p in m.parameters(recurse=False)]
    if len(set(owned)) < len(owned):
        raise NotImplementedError("fisher: tied parameters (one tensor in two modules) are not supported")
    return out


@contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode for the duration, then each submodule's own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.train(mode)


def sum_sq_grads(model: nn.Module, x, c, eps) -> dict[str, torch.Tensor]:
    """sum_b (d nelbo_b / d theta)^2 for every parameter, from one batched backward.

    Runs the model in eval mode: batch norm uses its running statistics, so sample b's loss depends on sample b
    alone and the gradient of sum_b nelbo_b at a layer's output, row b, is sample b's own gradient there. Forward
    hooks keep each layer's input and output; ``autograd.grad`` of the summed loss with respect to those outputs
    gives their gradients (and skips the batch weight gradients); each layer's rule squares and sums the
    per-sample weight gradients (see ``_RULES``). Layers used twice in a forward (weight sharing) are refused.
    """
    if not all(p.requires_grad for p in model.parameters()):
        raise ValueError("sum_sq_grads needs every parameter to require grad")
    layers = _layers(model)
    out = {}
    with _eval_mode(model), torch.enable_grad():
        captured = _layer_grads(model, layers, x, c, eps)
        for prefix, m, rule in layers:
            a, d = captured.get(m, (None, None))
            if d is None:  # layer unused, or no path to the loss: every per-sample gradient is zero
                sums = {n: torch.zeros_like(p) for n, p in m.named_parameters(recurse=False)}
            else:
                sums = rule(m, a, d)
            out.update({prefix + n: sums[n] for n, _ in m.named_parameters(recurse=False)})
    return {name: out[name] for name, _ in model.named_parameters()}


def _layer_grads(model: nn.Module, layers, x, c, eps) -> dict:
    """{module: (its input, d(sum_b nelbo_b)/d(its output))} for every hooked layer the forward uses."""
    seen = {}

    def keep(module, inputs, output):
        if module in seen:
            raise NotImplementedError(f"fisher: {type(module).__name__} is called twice per forward")
        seen[module] = (inputs[0].detach(), output)

    handles = [m.register_forward_hook(keep) for _, m, _ in layers]
    try:
        loss = negative_elbo(model, x, c, eps).sum()
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(loss, [y for _, y in seen.values()], allow_unused=True)
    return {m: (a, d) for (m, (a, _)), d in zip(seen.items(), grads)}


def sum_sq_grads_loop(model: nn.Module, x, c, eps) -> dict[str, torch.Tensor]:
    """The reference: one backward per sample, square, accumulate. Slow and obviously right; eval mode."""
    named = list(model.named_parameters())
    out = {name: torch.zeros_like(p) for name, p in named}
    with _eval_mode(model), torch.enable_grad():
        for b in range(len(x)):
            loss = negative_elbo(model, x[b:b + 1], c[b:b + 1], eps[b:b + 1]).sum()
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            for (name, _), g in zip(named, grads):
                if g is not None:
                    out[name] += g.square()
    return out


def _float32_copy(model: nn.Module, accelerator=None) -> nn.Module:
    """A float32, eval-mode, all-trainable deep copy of the bare model, without Accelerate's autocast wrapper."""
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    net = copy.deepcopy(model)
    for attr in ("forward", "_original_forward"):  # mixed precision patches forward on the instance
        net.__dict__.pop(attr, None)
    return net.float().eval().requires_grad_(True)


def _all_reduce_sum(sums: dict[str, torch.Tensor], accelerator) -> dict[str, torch.Tensor]:
    """Sum each tensor over processes, in one flat all-reduce."""
    flat = torch.cat([s.flatten() for s in sums.values()])  # (n_params,)
    check_device(accelerator, flat, what="the Fisher's sums")
    flat = accelerator.reduce(flat, reduction="sum")
    parts = flat.split([s.numel() for s in sums.values()])
    return {name: part.view_as(s) for (name, s), part in zip(sums.items(), parts)}


def diag_fisher(model: nn.Module, n_samples: int, seed: int, batch: int, accelerator=None,
                progress: bool = True, classes=None) -> dict[str, torch.Tensor]:
    """F_i = (1/N) sum_n (d nelbo_n / d theta_i)^2 over N = ``n_samples`` samples the model draws itself.

    Computed in float32 on a deep copy of the (unwrapped) model, in eval mode, with autocast and TF32 off
    (``runtime.exact_float32``), so neither mixed precision nor a GPU's TF32 touches it. With an ``accelerator``,
    process r of P takes blocks r, r+P, r+2P, ... of ``BLOCK`` samples, in backward batches of ``batch`` samples
    (rounded to whole blocks); the squared-gradient sums are all-reduced and divided by N on every process. The result is the same for any P and batch up to
    float32 summation order. ``classes``: the samples' labels only from these (``class_fisher``).
    Returns {parameter name: float32 tensor} on the model's device.
    """
    if n_samples < 1 or batch < 1:
        raise ValueError(f"diag_fisher needs n_samples >= 1 and batch >= 1, got {n_samples} and {batch}")
    net = _float32_copy(model, accelerator)
    if accelerator is not None:  # its sums meet in an all-reduce on accelerator.device
        check_device(accelerator, net, what="the Fisher's model")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    blocks = list(range(rank, math.ceil(n_samples / BLOCK), world))
    per_step = max(1, round(batch / BLOCK))
    sums = {name: torch.zeros_like(p) for name, p in net.named_parameters()}
    n_mine = sum(min(BLOCK, n_samples - k * BLOCK) for k in blocks)
    is_main = accelerator is None or accelerator.is_main_process
    device_type = next(net.parameters()).device.type
    with tqdm(total=n_mine, unit="sample", desc="fisher", disable=not (progress and is_main)) as bar, \
            torch.autocast(device_type=device_type, enabled=False), exact_float32():
        for i in range(0, len(blocks), per_step):
            parts = [fisher_batch(net, seed, k * BLOCK, min(BLOCK, n_samples - k * BLOCK), classes)
                     for k in blocks[i:i + per_step]]
            x, c, eps = (torch.cat(t) for t in zip(*parts))  # (b, 1, 28, 28), (b,), (b, z)
            for name, sq in sum_sq_grads(net, x, c, eps).items():
                sums[name] += sq
            bar.update(len(x))
    if world > 1:
        sums = _all_reduce_sum(sums, accelerator)
    return {name: s / n_samples for name, s in sums.items()}


def class_fisher(model: nn.Module, classes, n_samples: int, seed: int, batch: int = 500, accelerator=None,
                 progress: bool = False) -> dict[str, torch.Tensor]:
    """The diagonal Fisher on samples the model generates for ``classes`` only (e.g. the forgotten ones): how much
    each weight matters to those classes. Same estimator as ``diag_fisher``."""
    if not classes:
        raise ValueError("class_fisher needs at least one class")
    return diag_fisher(model, n_samples, seed, batch, accelerator, progress, classes=tuple(classes))


def retained_fisher(model: nn.Module, forget, n_samples: int, seed: int, batch: int = 500, accelerator=None,
                    progress: bool = False) -> dict[str, torch.Tensor]:
    """``class_fisher`` on every class not in ``forget``."""
    return class_fisher(model, [c for c in range(model.n_classes) if c not in forget], n_samples, seed, batch,
                        accelerator, progress)
