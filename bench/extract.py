"""Benchmark extraction against nn.GRU alone, at several GRU sizes; prints one JSON line.

    flock /tmp/gruviz-heavy.lock .venv/bin/python bench/extract.py                  # 50k dogs, H = 64 and 128
    flock /tmp/gruviz-heavy.lock .venv/bin/python bench/extract.py --dogs 200000 --hidden 128 --only-e

Per GRU size, in the same process (best of --repeats, the machine is shared):

    gemm   float32 matmul FLOP rate of this process (2048^2; 8192^2 on a GPU, TF32 off): the ceiling
    a      the notebook's loop: nn.GRU over one dog at a time (a sample of dogs; dog-steps/s)
    b      packed nn.GRU forward alone over length-sorted batches (top layer, no gates, nothing kept)
    f      the model's own forward as extraction runs it (padded batches, scores and fused GRU output)
    c      gruviz compute alone: iter_extract (model run, every layer, gates, check, float32 to host:
           what the block's GRU thread does)
    d      the block's other side alone: each float32 batch summarised (per-row summaries, per-unit
           accumulators), cast into float16 shard buffers, compressed and written (the shard's real
           batches, written to every shard); d_store is the store's write alone (the writer thread)
    e      gruviz end to end through storage.states as the pipeline runs it (begin_run, every
           block, finish_run: compute overlapping summaries, compression and writes); e_blocks is
           the same without begin_run's per-row metadata (rows / the blocks' own seconds)
    codec  numcodecs Blosc with the store's settings on the same float16 h, z, r in inner-chunk
           pieces, one thread, no Zarr, no disk: the write path's ceiling (store_write_share_of_codec
           = d_store's MB/s over it), beside other Blosc settings (size ratio and MB/s each)
    stats  the stats stage on e's run: new (compute_stats: the blocks' summaries, no state decoded)
           and old (the stage as it was before issue 26, from git: every seed's states decoded and
           scanned, then the tables)

Rates are dog-steps per second of one model (rows x seeds / seconds). c's share of the ceiling
counts the GEMM FLOPs of one GRU pass per step (c_over_ceiling, what the states minimally cost)
and those gruviz executes (c_executed_over_ceiling: the model's fused pass, the gate products,
and the single-layer passes of the layers below the top in a deeper GRU). Targets (issue 15):
e >= 0.7 b and e >= 10 a at every size, c >= 30% of the ceiling, the 1e-5 check passing on every batch.

Issue 26's targets: e's time <= 1.25 x max(c's, d's), e >= 0.38 b, the store at >= 70% of the codec, the stats
stage at most a third of the old one's time. Three runs on the shared 2-core box (50k dogs, one torch thread, best
of 2, 2026-12-07 night, memory touched before the writing phases, stats best of 3 from the second run on):
H64 e/b 0.384 / 0.366 / 0.353, e/max(c, d) 1.23 / 1.26 / 1.49, store 0.87 / 0.68 / 0.71 of lz4-5 bitshuffle
(~1,950 MB/s), stats 0.42 (one call each) / 0.23 / 0.20; H128 e/b 0.39 / 0.46 / 0.48, e/max(c, d) 1.28 / 1.11 /
1.19, store 0.90 / 1.11 / 0.91, stats 0.26 / 0.21 / 0.14. On the Iggy night (--real, H48, 2 seeds) stats 0.41-0.44 s
against 1.70-1.72 s (0.24-0.26). Cold (--cold: a new file's pages first touched during the write, 0.4 GB/s here)
the store wrote at 0.32-0.35 of the codec. The machine is noisy: repeated e-only runs at H64 spread 245k-345k
dog-steps/s, so e/b at H64 sits on the 0.38 line and e/max(c, d) on the 1.25 line.

On a CUDA machine the cases run on the GPU (CPU torch threads still --threads) and a CUDA-vs-CPU
equivalence check extracts a sample of dogs on both. Lengths are synthetic with a long tail
(lognormal, median 12, clipped to 1..150) unless --real uses the registry's current model set and
the newest snapshot's sequences.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.stages import stats as stats_stage  # noqa: E402
from flows.stages.extract import _absorb, extract_run  # noqa: E402
from gruviz_core import stats as gst  # noqa: E402
from gruviz_core.extract import BATCH_ELEMENTS, CHECK_TOL, choose_device, iter_extract, length_batches  # noqa: E402
from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU  # noqa: E402
from gruviz_core.sequences import pad_batch  # noqa: E402
from storage import states, writer  # noqa: E402

N_CTX = 8


class PeakRSS:
    """Samples this process's RSS every 20 ms in a thread; `.peak_mb` once stopped."""

    def __init__(self):
        self._proc, self.peak = psutil.Process(), 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self):
        self.peak = self._proc.memory_info().rss
        self._t.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._t.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


WARM = True
"""Touch fresh memory before each phase that writes files (`--cold` clears it): see `warm_memory`."""


def warm_memory(nbytes: int, force: bool = False) -> None:
    """Touch and free a quarter more than nbytes of memory (and 256 MB) just before a timed phase that writes about
    nbytes to new files.

    On a VM whose host takes back the guest's free memory (this box: virtio_balloon free page reporting, within
    about 30 s), the first touch of a page costs ~2 ms/MB: 0.45-0.5 GB/s, against ~8 GB/s for a page freed a moment
    ago. A new file's page cache is made of such pages, so the store's writes timed the hypervisor (a dd of 768 MB
    into kept files: 420 MB/s; the same just after touching 6 GB: 5 GB/s; O_DIRECT: 1.6 GB/s). Touched and freed
    just before, the pages are backed through the phase. `file_write_rates` reports both rates."""
    if (WARM or force) and nbytes > 0:
        np.ones(int(nbytes) * 5 // 4 + (256 << 20), np.uint8)  # filled, so every page is touched; freed at once


def state_bytes(models, n_obs: int) -> int:
    """Bytes of every seed's float16 h, z and r over n_obs rows: what a phase writes, beside small metadata."""
    gru = models[0].gru
    return 3 * n_obs * len(models) * gru.num_layers * gru.hidden_size * 2


def file_write_rates(scratch: Path, mb: int = 384) -> dict:
    """MB/s of one buffered write of `mb` MB into a new file: cold (pages the host may have taken back; run first)
    and just after touching that much memory (`warm_memory`, forced). Both files are kept until the end, as a
    store's are."""
    data = np.ones(mb << 20, np.uint8)
    scratch.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("cold", "warm"):
        if name == "warm":
            warm_memory(len(data), force=True)
        t = time.perf_counter()
        with open(scratch / f"file-write-{name}", "wb") as f:
            f.write(data)
        out[f"file_write_{name}_mb_s"] = round(len(data) / (time.perf_counter() - t) / 1e6)
    return out


def rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic(n_dogs: int, n_feat: int, n_ctx: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(np.exp(rng.normal(np.log(12), 0.9, size=n_dogs))), 1, 150).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    return dict(
        seqs_values=rng.normal(size=(n, n_feat)).astype(np.float32),
        context=rng.normal(size=(n, n_ctx)).astype(np.float32), offsets=offsets,
        dog_id=np.array([f"D{i}" for i in range(n_dogs)], dtype=object),
        dog_name=np.array([f"Dog {i}" for i in range(n_dogs)], dtype=object),
        race_id=np.array([f"R{i // 7}" for i in range(n)], dtype=object),
        race_date=np.datetime64("2023-01-01") + (np.arange(n) % 900).astype("timedelta64[D]"),
        won=(rng.random(n) < 0.14).astype(np.float32), market_prob=np.full(n, 0.14, np.float32),
    )


def real_inputs(root: str) -> tuple[dict, list[LoadedModel]]:
    from flows.stages.features import run as ensure_sequences
    from storage.forms import latest_snapshot
    from storage.registry import load_model_set
    from storage.sequences import load_sequences

    ms = load_model_set(root)
    seqs = load_sequences(ensure_sequences(root, ms.meta.get("snapshot_id") or latest_snapshot(root)))
    values, context = ms.prepare(seqs)
    return dict(seqs_values=values, context=context, offsets=seqs.offsets, dog_id=seqs.dog_id,
                dog_name=seqs.dog_name, race_id=seqs.race_id, race_date=seqs.race_date, won=seqs.won,
                market_prob=seqs.market_prob), ms.models


def make_models(n_feat: int, hidden: int, layers: int, seeds: int) -> list[LoadedModel]:
    models = []
    for s in range(seeds):
        torch.manual_seed(s)
        cfg = ModelConfig(n_feat, N_CTX, hidden_size=hidden, num_layers=layers, seed=s)
        models.append(LoadedModel.wrap(RaceGRU(cfg), [f"f{i}" for i in range(n_feat)],
                                       [f"c{i}" for i in range(N_CTX)], model_id=f"bench/{s}"))
    return models


def gemm_gflops(device: torch.device, reps: int = 5) -> float:
    """float32 matmul FLOP rate (TF32 off, as extraction runs)."""
    n = 8192 if device.type == "cuda" else 2048
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        a @ b
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def one_at_a_time(model: LoadedModel, inp: dict, n_sample: int, device: torch.device) -> float:
    """a: dog-steps/s of nn.GRU over one dog at a time (a random sample of dogs; the rate scales per dog-step)."""
    off, vals = inp["offsets"], inp["seqs_values"]
    dogs = np.random.default_rng(1).choice(len(off) - 1, size=min(n_sample, len(off) - 1), replace=False)
    model.module.to(device)
    steps, t = 0, time.perf_counter()
    with torch.inference_mode():
        for d in dogs:
            x = torch.from_numpy(vals[off[d] : off[d + 1]])[None].to(device)
            model.gru(x)
            steps += x.shape[1]
        sync(device)
    return steps / (time.perf_counter() - t)


def packed(model: LoadedModel, inp: dict, batch_size: int, device: torch.device) -> float:
    """b: dog-steps/s of nn.GRU over length-sorted packed batches, states of the top layer only."""
    off = inp["offsets"]
    model.module.to(device)
    t = time.perf_counter()
    with torch.inference_mode():
        for pos in length_batches(np.diff(off), batch_size=batch_size):
            x, lengths = pad_batch(inp["seqs_values"], off, pos)
            p = nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x).to(device), torch.from_numpy(lengths),
                                                  batch_first=True)
            model.gru(p)
        sync(device)
    return int(off[-1]) / (time.perf_counter() - t)


def forward_only(model: LoadedModel, inp: dict, batch_size: int, device: torch.device) -> float:
    """f: dog-steps/s of the model's own forward over extraction's padded batches (what extraction must run)."""
    off = inp["offsets"]
    gru = model.gru
    model.module.to(device)
    max_tokens = max(256, BATCH_ELEMENTS // (gru.num_layers * gru.hidden_size))
    t = time.perf_counter()
    with torch.inference_mode():
        for pos in length_batches(np.diff(off), batch_size=batch_size, max_tokens=max_tokens):
            x, _ = pad_batch(inp["seqs_values"], off, pos)
            c, _ = pad_batch(inp["context"], off, pos)
            model.run(torch.from_numpy(x).to(device), torch.from_numpy(c).to(device))
        sync(device)
    return int(off[-1]) / (time.perf_counter() - t)


def compute_only(models, inp: dict, batch_size: int, device) -> tuple[float, float, int]:
    """c: dog-steps/s of gruviz's extraction (model run, every layer, gates, check, float16) without the store.

    Returns the rate, the largest check residual and the number of batches over CHECK_TOL (0: every batch passed).
    """
    off, n = inp["offsets"], int(inp["offsets"][-1])
    t = time.perf_counter()
    err, failed = 0.0, 0
    for _, bs in iter_extract(models, inp["seqs_values"], inp["context"], off, np.arange(len(off) - 1),
                              device=device, batch_size=batch_size, dtype=torch.float32):
        err = max(err, bs.max_err)
        failed += not bs.max_err <= CHECK_TOL
    return n * len(models) / (time.perf_counter() - t), err, failed


def writes_only(root: Path, models, inp: dict, batch_size: int) -> tuple[float, dict]:
    """d: dog-steps/s of the block's non-GRU side (summaries, per-unit accumulators, float16 buffers, compression,
    writes) on the first shard's real float32 batches, written to every shard, and the rows' metadata; with
    d_store (the writer thread's Zarr writes alone) and the codec alone on the same float16 arrays."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    meta = {k: inp[k] for k in ("offsets", "dog_id", "dog_name")}
    rows = {k: inp[k] for k in states.ROW_META}
    gru = models[0].gru
    plan = writer.begin_run(root, "writes", {}, n_layers=gru.num_layers, n_units=gru.hidden_size,
                            seeds=list(range(len(models))), **meta)
    off = inp["offsets"]
    s1 = min(plan.shard_rows, plan.n_obs)
    dogs = np.arange(0, int(np.searchsorted(off, s1, "left")))
    batches = [bs for _, bs in iter_extract(models[:1], inp["seqs_values"], inp["context"], off, dogs,
                                            device="cpu", batch_size=batch_size, dtype=torch.float32)]
    lock, units = threading.Lock(), gst.UnitAccumulators()
    slots = threading.BoundedSemaphore(len(batches) + 1)
    shards = list(range(0, plan.n_obs, plan.shard_rows))
    states_b = state_bytes(models, plan.n_obs)
    warm_memory(states_b)
    t = time.perf_counter()
    for b in range(plan.n_blocks):
        with writer.BlockWriter(plan, b) as bw:
            bw.write_rows(rows, 0)
    with writer.BlockWriter(plan, 0) as bw, ThreadPoolExecutor(1) as pool:
        for s0 in shards:
            e = min(s0 + plan.shard_rows, plan.n_obs)
            for k in range(len(models)):
                bw.reserve()
                buf = bw.buffers(k, 0, s1)
                jobs = []
                for bs in batches:
                    slots.acquire()
                    jobs.append(pool.submit(_absorb, buf, bs, off, units, lock, slots))
                n = e - s0
                bw.write(replace(buf, s0=s0, s1=e, h=buf.h[:n], z=buf.z[:n], r=buf.r[:n], score=buf.score[:n],
                                 summary={q: a[:n] for q, a in buf.summary.items()}, filled=[n]), after=jobs)
    d = plan.n_obs * len(models) / (time.perf_counter() - t)
    # the writer thread alone: the same float16 buffers into a fresh store
    buf16 = {q: getattr(buf, q) for q in ("h", "z", "r")}
    plan2 = writer.begin_run(root, "store", {}, n_layers=gru.num_layers, n_units=gru.hidden_size,
                             seeds=list(range(len(models))), **meta)
    warm_memory(states_b)
    t = time.perf_counter()
    with writer.BlockWriter(plan2, 0) as bw:
        for s0 in shards:
            e = min(s0 + plan2.shard_rows, plan2.n_obs)
            for k in range(len(models)):
                bw.reserve()
                n = e - s0
                bw.write(replace(buf, seed=k, s0=s0, s1=e, h=buf.h[:n], z=buf.z[:n], r=buf.r[:n],
                                 score=buf.score[:n], summary={}, filled=[n]))
    store_s = time.perf_counter() - t
    return d, {"d_store_mb_s": round(states_b / store_s / 1e6, 1), **codec_alone(plan2, buf16)}


def codec_alone(plan, buf16: dict) -> dict:
    """The store's Blosc settings (and others) on the same float16 h, z, r, in inner-chunk pieces, one thread."""
    import numcodecs
    import zarr
    from numcodecs import Blosc

    arr = zarr.open_group(zarr.storage.LocalStore(plan.path / states.STATES), mode="r")["seed0/h"]
    blosc = arr.metadata.codecs[0].codecs[1]
    mine = (str(blosc.cname.value), int(blosc.clevel), str(blosc.shuffle.value))
    shuffles = {"bitshuffle": Blosc.BITSHUFFLE, "shuffle": Blosc.SHUFFLE, "noshuffle": Blosc.NOSHUFFLE}
    data = np.concatenate([np.ascontiguousarray(buf16[q]).view(np.uint8).ravel() for q in ("h", "z", "r")])
    piece = plan.chunk_rows * plan.n_layers * plan.n_units * 2
    settings = [mine] + [c for c in (("zstd", 1, "bitshuffle"), ("lz4", 1, "bitshuffle"), ("lz4", 5, "bitshuffle"),
                                     ("lz4", 5, "shuffle"), ("blosclz", 5, "bitshuffle")) if c != mine]
    numcodecs.blosc.set_nthreads(1)
    out = {}
    for cname, clevel, shuffle in settings:
        codec = Blosc(cname=cname, clevel=clevel, shuffle=shuffles[shuffle], typesize=2)
        best, size = 0.0, 0
        for _ in range(3):
            t = time.perf_counter()
            size = sum(len(codec.encode(data[a : a + piece])) for a in range(0, len(data), piece))
            best = max(best, len(data) / (time.perf_counter() - t) / 1e6)
        out[f"{cname}-{clevel}-{shuffle}"] = {"mb_s": round(best, 1), "ratio": round(len(data) / size, 4)}
    return {"codec": "-".join(map(str, mine)), "codec_mb_s": out["-".join(map(str, mine))]["mb_s"],
            "codec_settings": out}


STATS_BEFORE = "2032330"
"""The commit before issue 26: its stats stage decoded and scanned every seed's states."""


def stats_old_vs_new(run: Path, reps: int = 3) -> dict:
    """The stats stage on one run: new (compute_stats: the blocks' summaries) and old (the stage as it was at
    STATS_BEFORE, run from git against today's code: it decodes every seed's h, z, r and scans them)."""
    import subprocess
    import types

    src = subprocess.run(["git", "show", f"{STATS_BEFORE}:flows/stages/stats.py"], cwd=Path(__file__).parents[1],
                         capture_output=True, text=True, check=True).stdout
    if "storage.fs" not in sys.modules:  # the old stage's path helper, since folded into storage.store
        from storage.store import location

        sys.modules["storage.fs"] = types.SimpleNamespace(store_path=location)
    before = types.ModuleType("stats_before")
    exec(compile(src, f"{STATS_BEFORE}:flows/stages/stats.py", "exec"), before.__dict__)  # noqa: S102
    times = {"old": np.inf, "new": np.inf}
    for _ in range(reps):  # alternating, best of each: one call of either spreads 0.4-0.7 s on the Iggy night
        for name, fn in (("old", before.compute_stats), ("new", stats_stage.compute_stats)):
            t = time.perf_counter()
            fn(run)
            times[name] = min(times[name], time.perf_counter() - t)
    return {"stats_new_s": round(times["new"], 3), "stats_old_s": round(times["old"], 3), "stats_repeats": reps,
            "stats_new_over_old": round(times["new"] / times["old"], 3), "stats_old_commit": STATS_BEFORE}


def end_to_end(root: Path, models, inp: dict, batch_size: int, device,
               stats: bool = False) -> tuple[float, float, float, dict]:
    """e: extract_run (begin_run, every block, finish_run) as the pipeline runs it; `stats`: the stats stage on
    the run, new and old."""
    warm_memory(state_bytes(models, int(inp["offsets"][-1])))
    base = rss_mb()
    with PeakRSS() as mem:
        t = time.perf_counter()
        tmp = extract_run(root, "e2e", {}, models, device=str(device), batch_size=batch_size, **inp)
        secs = time.perf_counter() - t
    info = json.loads((tmp / "run.json").read_text())
    disk = sum(p.stat().st_size for p in (tmp / states.STATES).rglob("*") if p.is_file())
    reader = states.open_states(tmp, allow_incomplete=True)
    ids = inp["dog_id"][np.random.default_rng(2).choice(len(inp["dog_id"]), 200, replace=False)]
    reader.dog(ids[0])
    t = time.perf_counter()
    for i in ids:
        reader.dog(i)
    read_ms = (time.perf_counter() - t) / len(ids) * 1e3
    rows = info["n_obs"] * len(models)
    more = stats_old_vs_new(tmp) if stats else {}
    return rows / secs, secs, mem.peak_mb - base, {**more,
        "peak_rss_mb": mem.peak_mb, "rss_before_e_mb": base, "store_mb": round(disk / 2**20, 1),
        "dog_read_ms": round(read_ms, 2), "e_blocks_seconds": info["extract_seconds"],
        "e_blocks_dog_steps_s": round(rows / info["extract_seconds"]),
        "check_max_err": info["check_max_err"], "layout": info["layout"],
    }


def cuda_vs_cpu(models, inp: dict, batch_size: int, n_dogs: int = 2000) -> dict:
    """Extract a sample of dogs on the GPU and on the CPU; the largest differences of what is stored."""
    off = inp["offsets"]
    dogs = np.sort(np.random.default_rng(3).choice(len(off) - 1, size=min(n_dogs, len(off) - 1), replace=False))
    out = {}
    for dev in ("cpu", "cuda"):
        got = {"h": [], "z": [], "r": [], "score": [], "dogs": []}
        err = 0.0
        for _, bs in iter_extract(models[:1], inp["seqs_values"], inp["context"], off, dogs, device=dev,
                                  batch_size=batch_size):
            err = max(err, bs.max_err)
            for q in got:
                got[q].append(getattr(bs, q))
        out[dev] = {q: np.concatenate(v) for q, v in got.items()}
        out[dev]["err"] = err
    same_order = bool(np.array_equal(out["cpu"]["dogs"], out["cuda"]["dogs"]))
    diff = {}
    if same_order:
        for q in ("h", "z", "r", "score"):
            gap = out["cpu"][q].astype(np.float32) - out["cuda"][q].astype(np.float32)
            diff[f"max_abs_diff_{q}"] = float(np.abs(gap).max()) if gap.size else 0.0
    ok = same_order and all(v <= (1e-4 if k.endswith("score") else 2e-3) for k, v in diff.items())
    return {"dogs": len(dogs), "same_order": same_order, **diff, "check_max_err_cpu": out["cpu"]["err"],
            "check_max_err_cuda": out["cuda"]["err"], "equivalent": ok}


def one_size(models, inp: dict, args, device: torch.device, scratch: Path, ceiling: float) -> dict:
    """Every rate for one model set (one GRU size), best of --repeats each."""
    gru = models[0].gru
    n_obs = int(inp["offsets"][-1])
    rows = n_obs * len(models)
    reps = max(1, args.repeats)  # best of N: the machine is shared, the best run is the least disturbed
    out: dict = {"hidden": gru.hidden_size, "layers": gru.num_layers, "seeds": len(models)}
    if not args.only_e:
        a = b = f = c = d = 0.0
        d_codec: dict = {}
        err_c, failed_c = 0.0, 0
        for i in range(reps):  # interleaved, so a burst of load elsewhere hits every case alike
            a = max(a, one_at_a_time(models[0], inp, args.one_dog_sample, device))
            b = max(b, packed(models[0], inp, args.batch_size, device))
            f = max(f, forward_only(models[0], inp, args.batch_size, device))
            rate, err, failed = compute_only(models, inp, args.batch_size, device)
            c, err_c, failed_c = max(c, rate), max(err_c, err), failed_c + failed
            rate, codec = writes_only(scratch / f"w{i}", models, inp, args.batch_size)
            if rate > d:
                d, d_codec = rate, codec
            shutil.rmtree(scratch / f"w{i}", ignore_errors=True)
    runs = []
    for i in range(reps if not args.only_e else 1):
        runs.append(end_to_end(scratch / f"e{i}", models, inp, args.batch_size, device, stats=i == 0))
        shutil.rmtree(scratch / f"e{i}", ignore_errors=True)
    e, e_secs, _, _ = max(runs, key=lambda r: r[0])
    _, _, growth, extra = runs[0]  # memory from the first run, before any allocator reuse (and the stats times)
    e_blocks = max(r[3]["e_blocks_dog_steps_s"] for r in runs)
    out.update(extra, e_blocks_dog_steps_s=e_blocks, e_dog_steps_s=round(e), e_seconds=round(e_secs, 2),
               rss_growth_during_e_mb=round(growth, 1),
               check_passed=max(r[3]["check_max_err"] for r in runs) <= CHECK_TOL)
    if not args.only_e:
        layer_flop = [2 * 3 * gru.hidden_size * ((gru.input_size if k == 0 else gru.hidden_size) + gru.hidden_size)
                      for k in range(gru.num_layers)]  # GEMM FLOPs of each layer over one step
        pass_flop = sum(layer_flop)  # one GRU pass
        executed = 2 * pass_flop + sum(layer_flop[:-1])  # model's fused pass, gate products, layers below the top
        c_secs, d_secs = rows / c, rows / d
        out.update(
            a_one_dog_dog_steps_s=round(a), b_packed_dog_steps_s=round(b), f_forward_dog_steps_s=round(f),
            c_compute_dog_steps_s=round(c), d_writes_dog_steps_s=round(d),
            c_gflops=round(c * pass_flop / 1e9, 2), c_over_ceiling=round(c * pass_flop / 1e9 / ceiling, 4),
            c_executed_over_ceiling=round(c * executed / 1e9 / ceiling, 4),
            e_over_b=round(e / b, 3), e_over_a=round(e / a, 2), e_blocks_over_b=round(e_blocks / b, 3),
            e_blocks_over_a=round(e_blocks / a, 2), c_over_b=round(c / b, 3), f_over_b=round(f / b, 3),
            c_over_f=round(c / f, 3), e_time_over_max_c_d=round(e_secs / max(c_secs, d_secs), 3),
            check_max_err_compute=err_c, check_failed_batches=failed_c, **d_codec,
            store_write_share_of_codec=round(d_codec["d_store_mb_s"] / d_codec["codec_mb_s"], 3),
            e_over_max_c_d_goal_1_25=e_secs / max(c_secs, d_secs) <= 1.25, e_over_b_goal_0_38=e >= 0.38 * b,
            goal_e_0_7_b=e >= 0.7 * b, goal_e_10_a=e >= 10 * a,
            goal_c_30pct_ceiling=c * pass_flop / 1e9 >= 0.3 * ceiling,
            goal_check_every_batch=failed_c == 0 and out["check_passed"],
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dogs", type=int, default=50_000)
    ap.add_argument("--hidden", default="64,128", help="GRU sizes, comma-separated (one case each)")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4096, help="dogs per batch (the pipeline's default)")
    ap.add_argument("--one-dog-sample", type=int, default=3000, help="dogs the one-dog-at-a-time loop runs")
    ap.add_argument("--device", default=None)
    ap.add_argument("--real", default=None, metavar="ROOT", help="store root with a model set and snapshot")
    ap.add_argument("--only-e", action="store_true", help="end to end (and RSS) only")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1, as the flows run it: 2 OpenMP threads on a busy 2-core box crawl)")
    ap.add_argument("--repeats", type=int, default=2, help="best of N for each rate")
    ap.add_argument("--dir", default=None, help="scratch dir (default: a temp dir, removed)")
    ap.add_argument("--cold", action="store_true",
                    help="no warm_memory before the phases that write files (time the VM's first touch too)")
    args = ap.parse_args()
    global WARM
    WARM = not args.cold
    torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    if args.real:
        inp, real_models = real_inputs(args.real)
        sets = [real_models]
    else:
        inp = synthetic(args.dogs, args.features, N_CTX)
        sets = [make_models(args.features, int(h), args.layers, args.seeds) for h in args.hidden.split(",")]
    n_obs = int(inp["offsets"][-1])
    out: dict = {"bench": "extract", "dogs": len(inp["offsets"]) - 1, "obs": n_obs, "device": str(device),
                 "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
                 "real": bool(args.real)}
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="gruviz-bench-extract-"))
    try:
        out.update(file_write_rates(scratch / "file-write"), warm=WARM)
        ceiling = 0.0 if args.only_e else max(gemm_gflops(device) for _ in range(max(1, args.repeats)))
        out["gemm_gflops"] = round(ceiling, 1)
        cases = {f"H{m[0].gru.hidden_size}": one_size(m, inp, args, device, scratch / f"H{i}", ceiling)
                 for i, m in enumerate(sets)}
        out["cases"] = cases
        if not args.only_e:
            out["goals_met"] = all(cs[g] for cs in cases.values() for g in cs if g.startswith("goal_"))
        if device.type == "cuda":
            out["cuda_vs_cpu"] = {k: cuda_vs_cpu(m, inp, args.batch_size) for k, m in zip(cases, sets)}
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
