"""Faults with real processes: a writer killed mid-run, two writers on one run at once.

The workers are this file run as a script (`python tests/test_faults.py <mode> ...`); they rebuild
the same data and models from fixed seeds, so the parent can check every row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
F, C, HIDDEN, LAYERS = 4, 2, 8, 2
LAYOUT = dict(chunk_rows=16, shard_chunks=2)  # 32-row shards: many shards from a few hundred rows


def models():
    from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU

    out = []
    for s in (11, 12):
        torch.manual_seed(s)
        m = RaceGRU(ModelConfig(F, C, hidden_size=HIDDEN, num_layers=LAYERS, seed=s))
        out.append(LoadedModel.wrap(m, [f"f{i}" for i in range(F)], [f"c{i}" for i in range(C)], model_id=f"s{s}"))
    return out


def inputs(seed: int, n_dogs: int = 40) -> dict:
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(0.08, size=n_dogs), 60)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    return dict(
        seqs_values=rng.normal(size=(n, F)).astype(np.float32), context=rng.normal(size=(n, C)).astype(np.float32),
        offsets=offsets, dog_id=np.array([f"D{i}" for i in range(n_dogs)], dtype=object),
        dog_name=np.array([f"Dog {i}" for i in range(n_dogs)], dtype=object),
        race_id=np.array([f"R{i}" for i in range(n)], dtype=object),
        race_date=np.datetime64("2024-01-01") + np.arange(n).astype("timedelta64[D]"),
        won=np.zeros(n, np.float32), market_prob=np.full(n, 0.2, np.float32),
    )


def spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, __file__, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def check_run(run_dir: Path, inp: dict) -> None:
    """Every row of every dog and seed is written and equals an in-process extraction."""
    from gruviz_core.extract import extract_batch
    from storage.states import open_states

    reader = open_states(run_dir)
    off = inp["offsets"]
    assert reader.n_obs == off[-1]
    for k, model in enumerate(models()):
        want = extract_batch(model, inp["seqs_values"], inp["context"], off, np.arange(len(off) - 1),
                             device=torch.device("cpu"))
        got = np.full_like(want.h, np.nan, dtype=np.float32)
        pos = 0
        for d, n in zip(want.dogs, want.lengths):
            got[pos : pos + n] = reader.dog(inp["dog_id"][d], seed=k).h
            pos += n
        assert not np.isnan(got).any(), "rows missing"
        np.testing.assert_allclose(got, want.h, atol=1e-3)


@pytest.mark.slow  # real processes, ~6 s
def test_killed_writer_leaves_published_run_intact(tmp_path):
    from flows.stages.extract import extract_run
    from storage import runs, states

    first = inputs(1)
    run1 = runs.publish_run(tmp_path, extract_run(tmp_path, "r1", {}, models(), device="cpu",
                                                            **first, **LAYOUT))
    before = states.open_states(run1).dog("D3").h.copy()
    proc = spawn("slow-run", str(tmp_path), "r2")
    try:
        assert proc.stdout.readline().startswith("tmp "), proc.stderr.read()
        assert proc.stdout.readline().startswith("progress"), proc.stderr.read()  # mid-run: blocks under way
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    # readers still see r1, whole, and nothing of r2
    assert runs.latest_run(tmp_path) == run1
    assert (tmp_path / "runs" / "LATEST").read_text().strip() == "r1"
    np.testing.assert_array_equal(states.open_states(run1).dog("D3").h, before)
    check_run(run1, first)
    (tmp,) = (tmp_path / "runs" / ".tmp").iterdir()
    from gruviz_core.errors import StoreError

    with pytest.raises(StoreError, match="no done marker"):
        runs.finish_run(tmp)
    # the next run publishes correctly
    second = inputs(2)
    run3 = runs.publish_run(tmp_path, extract_run(tmp_path, "r3", {}, models(), device="cpu",
                                                            **second, **LAYOUT))
    assert runs.latest_run(tmp_path) == run3
    check_run(run3, second)


@pytest.mark.slow  # real processes, ~6 s
def test_two_processes_write_blocks_concurrently(tmp_path):
    from storage import runs, writer

    inp = inputs(3, n_dogs=60)
    plan = writer.begin_run(
        tmp_path, "r1", {}, offsets=inp["offsets"], dog_id=inp["dog_id"], dog_name=inp["dog_name"],
        n_layers=LAYERS, n_units=HIDDEN, seeds=[11, 12], block_shards=1, **LAYOUT,
    )
    assert plan.n_blocks >= 6
    procs = [spawn("blocks", plan.tmp_dir, "3", str(p), "2") for p in (0, 1)]  # even / odd blocks
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    runs.finish_run(plan.path)
    check_run(runs.publish_run(tmp_path, plan.path), inp)


# ------------------------------------------------------- killing a command leaves no Prefect server behind


def _fake_store(home: Path) -> None:
    """Just enough store for the preflight to pass (the command is killed long before it is read)."""
    (home / "forms" / "snap1").mkdir(parents=True)
    (home / "forms" / "LATEST").write_text("snap1\n")
    (home / "models" / "set1").mkdir(parents=True)
    (home / "models" / "set1" / "manifest.json").write_text("{}")
    (home / "models" / "CURRENT").write_text("set1\n")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for PID 1 to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("command, sig", [("nightly", signal.SIGKILL), ("train", signal.SIGKILL),
                                          ("nightly", signal.SIGTERM)])
def test_killed_command_leaves_no_prefect_server(tmp_path, command, sig):
    home = tmp_path / "home"
    _fake_store(home)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PREFECT_HOME=str(tmp_path / "prefect"),
               GRUVIZ_HOME=str(home))
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", command, "--home", str(home)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = None
    try:
        deadline = time.monotonic() + 120
        while server is None and time.monotonic() < deadline and proc.poll() is None:
            server = next((c for c in _children(proc.pid) if "uvicorn" in _cmdline(c)), None)
            time.sleep(0.1)
        assert server is not None, f"no Prefect server child seen; exit {proc.poll()}: {proc.stderr.read()[-2000:]}"
        time.sleep(1.0)  # the server is up (or starting) under the command
        os.kill(proc.pid, sig)
        proc.wait(60)
        gone = time.monotonic() + 30
        while _alive(server) and time.monotonic() < gone:
            time.sleep(0.2)
        assert not _alive(server), f"Prefect server {server} outlived `gruviz {command}` killed by {sig.name}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if server is not None and _alive(server):
            os.kill(server, signal.SIGKILL)


# ------------------------------------------------------------- a damaged model set: clear errors


@pytest.fixture(scope="module")
def model_store(trained_store):
    """conftest's trained_store (a 1-seed set, read only: each test damages its own copy of models/) and its set."""
    root, _, report = trained_store
    return root, report.set_id


def _nan_weights(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    next(iter(state.values())).fill_(float("nan"))
    torch.save(state, path)


@pytest.mark.parametrize("damage, target, match", [
    (lambda p: p.write_bytes(b""), "seed_0/model.pt", "empty"),
    (lambda p: p.write_bytes(os.urandom(4096)), "seed_0/model.pt", "not a PyTorch state dict"),
    (lambda p: torch.save({"x": [1, 2]}, p), "seed_0/model.pt", "not a PyTorch state dict|not a state dict"),
    (_nan_weights, "seed_0/model.pt", "non-finite"),
    (lambda p: p.write_text("{not json"), "manifest.json", "not readable JSON"),
    (lambda p: p.write_text('{"set_id": "x"}'), "manifest.json", "seeds"),
    (lambda p: p.write_text("{}"), "normaliser.json", "missing or invalid fields"),
    (lambda p: p.write_text('{"bogus": 1}'), "seed_0/config.json", "missing or invalid fields"),
])
def test_damaged_model_set_is_a_clear_error(model_store, tmp_path, damage, target, match):
    import shutil

    from gruviz_core.errors import StoreError
    from storage.registry import load_model_set

    root, set_id = model_store
    store = tmp_path / "store"
    shutil.copytree(root / "models", store / "models")
    damage(store / "models" / set_id / target)
    with pytest.raises(StoreError, match=match) as err:
        load_model_set(store, set_id)
    text = str(err.value)
    assert target.split("/")[-1] in text and "gruviz train" in text and "weights_only=False" not in text


def _worker(argv: list[str]) -> None:
    from flows.stages.extract import write_block
    from storage import runs, states, writer

    mode = argv[0]
    if mode == "slow-run":  # a whole run in one process, slowed so the parent can kill it mid-way
        root, run_id = argv[1], argv[2]
        inp = inputs(2)
        vals, ctx = inp.pop("seqs_values"), inp.pop("context")
        rows = {k: inp.pop(k) for k in states.ROW_META}
        plan = writer.begin_run(root, run_id, {}, n_layers=LAYERS, n_units=HIDDEN, seeds=[11, 12],
                                block_shards=1, **inp, **LAYOUT)
        print("tmp", plan.tmp_dir, flush=True)

        def slow(done, total):
            print("progress", done, total, flush=True)
            time.sleep(0.5)

        for b in range(plan.n_blocks):
            write_block(plan, b, models(), vals, ctx, rows=rows, device="cpu", progress=slow)
        time.sleep(60)  # never finishes on its own within the test
    elif mode == "blocks":  # every `step`-th block from `first`
        tmp, seed, first, step = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        inp = inputs(seed, n_dogs=60)
        plan = runs.RunPlan.load(tmp)
        for b in range(first, plan.n_blocks, step):
            write_block(plan, b, models(), inp["seqs_values"], inp["context"], device="cpu",
                        rows={k: inp[k] for k in states.ROW_META})


if __name__ == "__main__":
    torch.set_num_threads(1)
    _worker(sys.argv[1:])
