"""Figures, the latent block, TensorBoard copies and the report, on the tiny baseline (no SA run needed here; the
pipeline's hook is covered in test_scripts.py)."""
import json
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
import torch

import copy

import sa_dist
from conftest import LIMIT, run_script, sa_config
from sa_dist.analysis.figures import FIGURES, log_to_tensorboard, make_figures
from sa_dist.analysis.latent import (drift_by_class, latent_block, latent_means, plot_latent_space,
                                     silhouette_by_class, subset, traversal)
from sa_dist.analysis.report import build_report
from sa_dist.config import with_values
from sa_dist.data import load_mnist
from sa_dist.evaluation.metrics import collateral
from sa_dist.pipeline import redraw_run, run_unlearn
from sa_dist.utils import UsageError


@pytest.fixture(scope="module")
def test_data():
    return load_mnist(False, None, LIMIT)


def test_plot_functions_are_public():
    assert sa_dist.plot_latent_space is plot_latent_space and callable(sa_dist.plot_latent_manifold)


def test_silhouette_and_drift_measure_what_they_say():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 100)
    tight = np.eye(3)[y] * 10 + rng.normal(0, 0.1, (300, 3))  # three far-apart clusters
    mixed = rng.normal(0, 1, (300, 3))  # one blob
    assert min(silhouette_by_class(tight, y).values()) > 0.9
    assert max(abs(v) for v in silhouette_by_class(mixed, y).values()) < 0.1
    moved = tight.copy()
    moved[y == 2] = rng.normal(0, 1, (100, 3))
    d = drift_by_class(tight, moved, y)
    assert d["0"] == 0 and d["1"] == 0 and d["2"] > 5


def test_latent_block_schema(tiny_baseline, test_data):
    """After a shift of every latent mean by the same vector (the encoder's output bias + 1): silhouettes are
    unchanged (the geometry is), and each class drifted by sqrt(z_dim) over its spread."""
    model, _ = tiny_baseline
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.enc_out.bias[:model.z_dim] += 1.0  # the mu half of (mu, logvar)
    lat = latent_block(model, shifted, *test_data, forget=[2], n=500)
    assert lat["n_images"] == 500 and set(lat["before"]["per_class"]) == {str(c) for c in range(10)}
    for c, v in lat["before"]["per_class"].items():
        assert lat["after"]["per_class"][c] == pytest.approx(v, abs=1e-4)
    xs, ys = subset(*test_data, 500, 0)
    mu, y = latent_means(model, xs, ys), ys.numpy()
    for c in range(10):
        spread = np.sqrt(((mu[y == c] - mu[y == c].mean(0)) ** 2).sum(1).mean())
        assert lat["drift"]["per_class"][str(c)] == pytest.approx(np.sqrt(model.z_dim) / spread, rel=1e-3)
    kept = [v for k, v in lat["before"]["per_class"].items() if k != "2"]
    assert lat["before"]["retained_mean"] == pytest.approx(np.mean(kept))
    assert lat["before"]["forgotten"] == {"2": lat["before"]["per_class"]["2"]}


class _Stub(torch.nn.Module):
    """decode(z, c) = z[:, 0] everywhere: the traversal's layout is visible in the pixel values."""
    z_dim, n_classes = 3, 10

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def decode(self, z, c):
        return z[:, :1, None, None].expand(-1, 1, 28, 28) + 0 * self.p


def test_traversal_grid_runs_along_the_chosen_axes():
    axes = torch.eye(3)[[0, 1]]
    imgs = traversal(_Stub(), 2, axes, steps=5, span=2.0).view(5, 5, 28, 28)[..., 0, 0]  # (rows, cols)
    assert torch.allclose(imgs[0], torch.sigmoid(torch.linspace(-2, 2, 5)))  # columns: -span .. +span
    assert torch.allclose(imgs[:, 0], torch.full((5,), torch.sigmoid(torch.tensor(-2.0)).item()))


def test_tsne_option_and_bad_projection(tiny_baseline, test_data, tmp_path):
    model, _ = tiny_baseline
    plot_latent_space(model, test_data, [2], model, "tsne", tmp_path / "t.png", n=200)
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UsageError, match="pca or tsne"):
        plot_latent_space(model, test_data, [2], method="umap", n=100)


@pytest.fixture(scope="module")
def report_dir(tiny_baseline, test_data, tmp_path_factory):
    """A run directory with real figures of the tiny baseline and a results.json with the blocks the report knows,
    one it does not (``attacks``) and one missing (``surrogate``)."""
    model, _ = tiny_baseline
    d = tmp_path_factory.mktemp("run")
    hist = [{"epoch": e, "train_nelbo": 200 - e, "test_nelbo": 190 - e, "seconds": 1.0} for e in (1, 2)]
    rows = [{"step": s, "surrogate_nelbo": 900 - s, "replay_nelbo": 120.0, "ewc": s / 10, "loss": 1.0}
            for s in (1, 11, 21)]
    seen = [str(k) for k in range(10)] + ["reject"]
    conf = {w: {"labels": seen[:10], "seen": seen, "mean_p": [[0.9 if k == c else 0.01 for k in range(11)]
                                                              for c in range(10)]} for w in ("before", "after")}
    conf["after"]["mean_p"][2] = [0.0] * 10 + [1.0]
    paths, latent = make_figures(d, model, model, [2], test_data, hist, rows, 543.4, n_silhouette=500,
                                 confusion=(conf["before"], conf["after"]))
    pc = {str(c): {"sample_acc": 0.9, "p_class": 0.8, "entropy": 0.1, "test_nelbo": 100.0 + c} for c in range(10)}
    results = {"config": {"model": {"arch": "linear"}}, "forget_classes": [2],
               "before": {"per_class": pc, "confusion": conf["before"]},
               "after": {"per_class": {**pc, "2": {**pc["2"], "p_class": 0.001}}, "confusion": conf["after"]},
               "collateral": collateral(conf["before"], conf["after"], [2]), "latent": latent,
               "baseline": {"history": hist}, "sa_history": {"every": 10, "rows": rows},
               "timing_s": {"unlearn": 12.5}, "attacks": {"inversion": {"p_class": 0.02, "steps": 100}}}
    (d / "results.json").write_text(json.dumps(results))
    return d, paths


def test_make_figures_writes_every_figure(report_dir):
    d, paths = report_dir
    assert [p.name for p in paths] == list(FIGURES)
    for p in paths:
        assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 10_000, p


def test_figures_and_baseline_curves_in_tensorboard(report_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d, paths = report_dir
    log_to_tensorboard(tmp_path / "tb", paths, json.loads((d / "results.json").read_text())["baseline"]["history"])
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    assert set(ea.Tags()["images"]) == {f"figures/{p.stem}" for p in paths}
    assert [e.value for e in ea.Scalars("baseline/test_nelbo")] == [189, 188]


def test_report_is_self_contained_and_renders_what_is_there(report_dir):
    d, paths = report_dir
    html_path, md_path = build_report(d)
    page = html_path.read_text()
    srcs = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(srcs) == len(paths) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(?!data:)', page) and "http" not in page  # nothing fetched
    assert "class 2 (forgotten)" in page and "retained mean (9 classes)" in page and "<details>" in page
    assert "<h2>attacks</h2>" in page and "inversion" in page  # an unknown block, shown generically
    assert "Collateral damage" in page and "Forgotten labels now look like: 2 -&gt; reject (1.000)" in page
    assert "<h2>Surrogate</h2>" not in page  # a missing block is skipped
    md = md_path.read_text()
    assert all(f"]({p.name})" in md for p in paths) and "| class 2 (forgotten) |" in md


@pytest.mark.slow
def test_report_in_headless_chromium(report_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install chromium)")
    d, paths = report_dir
    html_path, _ = build_report(d)
    # a deliberately broken image proves the probe sees a failed decode (naturalWidth 0)
    probe = ('<img id="broken" src="data:image/png;base64,AAAA"><script>window.addEventListener("load", () => '
             'document.body.setAttribute("data-probe", JSON.stringify({widths: [...document.images].filter(i => '
             'i.id !== "broken").map(i => i.naturalWidth), broken: document.getElementById("broken").naturalWidth, '
             'tables: document.querySelectorAll("table").length})));</script></body>')
    page = tmp_path / "probe.html"
    page.write_text(html_path.read_text().replace("</body>", probe))
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}/p",
                          "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r'data-probe="([^"]+)"', out.stdout)
    assert m, out.stderr[-2000:]
    probe = json.loads(m.group(1).replace("&quot;", '"'))
    assert len(probe["widths"]) == len(paths) and all(w > 100 for w in probe["widths"]), probe
    assert probe["broken"] == 0
    assert probe["tables"] >= 4


@pytest.mark.slow
def test_report_script_rebuilds_from_files_fast(report_dir, tmp_path):
    d, _ = report_dir
    build_report(d)
    (d / "report.html").unlink()  # the script writes it anew from the files
    t0 = time.perf_counter()
    r = run_script("scripts/report.py", d)
    assert r.returncode == 0, r.stderr[-2000:]
    assert time.perf_counter() - t0 < 30 and f"{d}/report.html" in r.stdout and (d / "report.html").is_file()
    r = run_script("scripts/report.py", tmp_path)
    assert r.returncode == 1 and "holds no results.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_run_without_figures_has_its_results_and_report_and_draws_them_later(tiny_baseline, tmp_path):
    cfg = with_values(sa_config(), {"train.limit": LIMIT, "sa.n_fisher": 200, "eval_samples": 20, "figures": False,
                                    "sa.sa_epochs": 1, "sa.n_replay": 256})
    res, run = run_unlearn(cfg, run_dir=str(tmp_path / "run"), checkpoint=str(tiny_baseline[1]))
    assert not list(run.glob("*.png")) and "latent" not in res and "figures" not in res["timing_s"]
    assert (run / "report.html").is_file() and "<img" not in (run / "report.html").read_text()
    assert res["environment"]["cpu_count"] >= 1 and (run / "unlearned.safetensors").is_file()
    paths = redraw_run(run, baseline=tiny_baseline[1])  # what `scripts/report.py DIR --figures` does
    assert {p.name for p in paths} == set(FIGURES) - {"curves_baseline.png"}  # --checkpoint: no baseline history
    assert "latent" in json.loads((run / "results.json").read_text())
