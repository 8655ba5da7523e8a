import gzip
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from sa_dist.data import PACKAGE_DATA, SHA256, load_mnist, loaders, prepare_mnist
from sa_dist.utils import UserError


def test_checksums_match_the_shared_readme():
    readme = (ROOT.parent / "shared" / "data" / "mnist" / "README.md")
    if not readme.is_file():
        readme = PACKAGE_DATA / "README.md"
    table = dict(re.findall(r"\| (\S+)\.gz \| .*? \| ([0-9a-f]{64}) \|", readme.read_text()))
    assert table == SHA256


def test_real_mnist_in_unit_range_and_torchvision_layout():
    x, y = load_mnist(train=False)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= x.min().item() and x.max().item() == 1.0
    assert y.shape == (10000,) and set(y.tolist()) == set(range(10))
    raw = prepare_mnist() / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir() if not p.name.startswith(".")) == sorted(SHA256)
    from torchvision.datasets import MNIST
    assert len(MNIST(str(prepare_mnist()), train=True, download=False)) == 60000


def test_loader_batches_cover_the_subset_once():
    tr, te = loaders(batch=256, seed=0, limit=1000)
    seen = torch.cat([c for _, c in tr])
    assert len(seen) == 1000 and torch.equal(seen.sort().values, load_mnist(True, limit=1000)[1].sort().values)
    x, c = next(iter(te))
    assert x.shape == (256, 1, 28, 28) and c.shape == (256,)


def _copy(tmp_path: Path) -> Path:
    d = tmp_path / "mnist"
    shutil.copytree(PACKAGE_DATA, d)
    for p in d.iterdir():
        p.chmod(0o644)
    return d


def test_corrupt_file_is_refused_with_its_name(tmp_path):
    d = _copy(tmp_path)
    f = d / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(gzip.decompress(f.read_bytes()))
    blob[100] ^= 0xFF  # one flipped byte: still valid gzip, wrong content
    f.write_bytes(gzip.compress(bytes(blob)))
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte.gz failed its checksum.*expected ff7bcfd4"):
        prepare_mnist(str(d))


def test_truncated_and_missing_files(tmp_path):
    d = _copy(tmp_path)
    (d / "train-labels-idx1-ubyte.gz").write_bytes((d / "train-labels-idx1-ubyte.gz").read_bytes()[:1000])
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz is corrupt"):
        prepare_mnist(str(d))
    (d / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz is missing"):
        prepare_mnist(str(d))


def test_script_reports_corrupt_data_in_one_line(tmp_path, cli):
    d = _copy(tmp_path)
    (d / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    code, _, err = cli("scripts/train_baseline.py", "--data-dir", d, "--epochs", "1", "--run-dir", tmp_path / "run")
    assert code == 1 and len(err) == 1 and "train-images-idx3-ubyte.gz is corrupt" in err[0]
    assert not (tmp_path / "run").exists()
