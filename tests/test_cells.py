"""benchmarks/cells.py: a cell is measured once per config hash, a changed config is a new cell, the load mark,
and tables rendered from the cells alone."""
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("cells", ROOT / "benchmarks" / "cells.py")
cells = importlib.util.module_from_spec(spec)
sys.modules["cells"] = cells
spec.loader.exec_module(cells)


def test_a_cell_is_measured_once_per_config_and_a_changed_config_is_a_new_cell(tmp_path):
    table, calls = cells.Table("t", results=tmp_path), []

    def fn():
        calls.append(1)
        return {"p": len(calls)}

    ev = {"version": 3, "sha256": "ab"}
    first = table.measure("conv-d2", {"arch": "conv", "forget": [2]}, fn, evaluator=ev, log=lambda *a: None)
    again = table.measure("conv-d2", {"arch": "conv", "forget": [2]}, fn, evaluator=ev, log=lambda *a: None)
    assert len(calls) == 1 and again == first and first["result"] == {"p": 1}
    changed = table.measure("conv-d2", {"arch": "conv", "forget": [2], "lr": 1e-3}, fn, evaluator=ev,
                            log=lambda *a: None)
    other_eval = table.measure("conv-d2", {"arch": "conv", "forget": [2]}, fn, evaluator={**ev, "sha256": "cd"},
                               log=lambda *a: None)
    assert len(calls) == 3 and changed["result"] == {"p": 2} and other_eval["result"] == {"p": 3}
    assert len(list((tmp_path / "t" / "cells").glob("*.json"))) == 3
    rec = json.loads(table.path("conv-d2", {"arch": "conv", "forget": [2], "evaluator": ev}).read_text())
    for key in ("hash", "commit", "machine", "load_1min_start", "load_1min_end", "other_load", "loaded", "wall_s"):
        assert key in rec
    assert rec["config"]["evaluator"] == ev and rec["machine"]["cores"] >= 1
    assert sorted(c["result"]["p"] for c in table.cells()) == [1, 2, 3]  # a table reads every cell on disk


def test_rekey_moves_only_the_cells_that_name_the_old_digest_and_records_why(tmp_path):
    table, log = cells.Table("t", results=tmp_path), (lambda *a: None)
    old, other = {"version": 1, "sha256": "old"}, {"version": 1, "sha256": "other"}
    table.measure("a", {"unlearn": {"x": 1}, "paper": old}, lambda: {"p": 1}, evaluator=other, log=log)
    table.measure("b", {"paper": other}, lambda: {"p": 2}, evaluator=other, log=log)
    assert table.rekey("old", "new", "same scores") == 1
    names = sorted(p.name for p in table.cells_dir.glob("*.json"))
    assert len(names) == 2 and not list(table.cells_dir.glob(".*"))
    moved = table.get("a", {"unlearn": {"x": 1}, "paper": {"version": 1, "sha256": "new"}, "evaluator": other})
    assert moved is not None and moved["result"] == {"p": 1} and moved["rekeyed"][0]["from"] == "old"
    assert moved["hash"] == cells.config_hash(moved["config"])
    assert table.get("a", {"unlearn": {"x": 1}, "paper": old, "evaluator": other}) is None  # the old key is gone
    assert table.get("b", {"paper": other, "evaluator": other})["result"] == {"p": 2}  # untouched
    calls = []
    table.measure("a", {"unlearn": {"x": 1}, "paper": {"version": 1, "sha256": "new"}}, lambda: calls.append(1),
                  evaluator=other, log=log)
    assert not calls  # a run keyed on the new digest finds the rekeyed cell


def test_a_cell_is_keyed_on_its_cpu_and_another_cpus_cells_are_read_not_measured(tmp_path, monkeypatch):
    log, calls = (lambda *a: None), []
    here = cells.Table("t", results=tmp_path)
    rec = here.measure("a", {"x": 1}, lambda: calls.append(1) or {"p": 1}, log=log)
    assert rec["config"]["platform"] == {"cpu": cells.machine()["cpu"], "torch": cells.machine()["torch"]}
    assert rec["hash"] == cells.config_hash(rec["config"]) and len(calls) == 1
    monkeypatch.setenv(cells.CPU_ENV, "Other CPU")
    there = cells.Table("t", results=tmp_path)
    assert there.get("a", {"x": 1}) is None  # another CPU's weights are other numbers
    with pytest.raises(RuntimeError, match="not measured on Other CPU"):
        there.measure("a", {"x": 1}, lambda: calls.append(1) or {"p": 2}, log=log)
    assert len(calls) == 1 and len(list(there.cells_dir.glob("*.json"))) == 1
    monkeypatch.setenv(cells.CPU_ENV, cells.machine()["cpu"])
    assert cells.Table("t", results=tmp_path).get("a", {"x": 1})["result"] == {"p": 1}


def test_cells_keyed_before_the_platform_get_the_one_their_record_names(tmp_path):
    table = cells.Table("t", results=tmp_path)
    table.cells_dir.mkdir(parents=True)
    old = {"table": "t", "cell": "a", "config": {"x": 1}, "hash": cells.config_hash({"x": 1}), "result": {"p": 1},
           "machine": {"cpu": "Intel(R) Xeon(R) Processor", "torch": "2.14.1"}}
    (table.cells_dir / f"a-{old['hash']}.json").write_text(json.dumps(old))
    assert table.key_by_platform() == 1 and table.key_by_platform() == 0
    (path,) = table.cells_dir.glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["config"] == {"x": 1, "platform": {"cpu": "Intel(R) Xeon(R) Processor", "torch": "2.14.1"}}
    assert path.name == f"a-{cells.config_hash(rec['config'])}.json" and rec["result"] == {"p": 1}
    intel = cells.Table("t", results=tmp_path, cpu="Intel(R) Xeon(R) Processor")
    intel.platform["torch"] = "2.14.1"
    assert intel.get("a", {"x": 1})["result"] == {"p": 1}


def test_a_cell_that_fails_writes_nothing(tmp_path):
    table = cells.Table("t", results=tmp_path)

    def boom():
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        table.measure("c", {"a": 1}, boom, log=lambda *a: None)
    assert not (tmp_path / "t" / "cells").exists() or not list((tmp_path / "t" / "cells").iterdir())


def test_the_load_mark_counts_other_processes_not_the_cells_own_threads():
    assert cells.load_record(2.1, 2.0, 0.1, own_threads=2)["loaded"] is False  # our own 2 threads
    assert cells.load_record(0.3, 2.0, 1.2, own_threads=2)["loaded"] is True  # another job beside it
    assert cells.load_record(4.0, 2.0, 0.0, own_threads=2)["loaded"] is True  # started on a busy machine
    assert cells.load_record(0.3, 0.3, 0.0, own_threads=2, gap=60.0)["loaded"] is True  # stopped a minute
    assert cells.seconds({"loaded": True}, 12.0) == "(loaded)" and cells.seconds({"loaded": False}, 12.04) == "12.0"


def test_the_sampler_counts_a_busy_process_and_leaves_out_this_process_tree():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        tree = cells._tree(os.getpid())
        assert busy.pid in tree and os.getpid() in tree  # a child is the cell's own work
        assert max(cells.runnable_threads(tree - {busy.pid}) for _ in range(20)) >= 1  # seen when not excluded
        with cells.LoadSampler(every=0.05, probe=lambda: 1.0) as s:
            time.sleep(0.3)
        assert len(s.samples) >= 3 and s.mean == 1.0 and 0.04 < s.longest_gap < 0.3
        with cells.LoadSampler(every=0.05, probe=lambda: time.sleep(0.4) or 0.0) as s:  # a sample that comes late
            time.sleep(0.5)
        assert s.longest_gap >= 0.4
    finally:
        busy.kill()


def test_code_commit_skips_commits_that_only_add_measured_cells(tmp_path):
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], capture_output=True, text=True,  # noqa: E731
                                    check=True).stdout.strip()
    git("init", "-q")
    git("config", "user.email", "t@t"), git("config", "user.name", "t")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "."), git("commit", "-qm", "code")
    code = git("rev-parse", "HEAD")
    cell = tmp_path / "benchmarks" / "results" / "t" / "cells" / "a.json"
    cell.parent.mkdir(parents=True)
    cell.write_text("{}")
    git("add", "."), git("commit", "-qm", "cell")
    head = git("rev-parse", "HEAD")
    assert head != code
    assert cells.code_commit(head, tmp_path) == code
    assert cells.code_commit(head + "-dirty", tmp_path) == code + "-dirty"
    (tmp_path / "code.py").write_text("x = 2\n")
    git("commit", "-qam", "change")
    assert cells.code_commit(git("rev-parse", "HEAD"), tmp_path) == git("rev-parse", "HEAD")
    assert cells.code_commit("not-a-commit", tmp_path) == "not-a-commit" and cells.code_commit(None, tmp_path) == "?"
