"""Benchmark the nightly on a local Dask cluster (worker processes) against the threads runner, on a
simulated night of --dogs dogs with the local store. Prints one JSON line.

    flock /tmp/gruviz-heavy.lock env OMP_NUM_THREADS=1 .venv/bin/python bench/cluster.py --dogs 20000
    flock /tmp/gruviz-heavy.lock env OMP_NUM_THREADS=1 .venv/bin/python bench/cluster.py   # 200,000 dogs

In one process, under a temporary Prefect server (prefect_test_harness): simulate and ingest the
dogs, register a small random model set (tests/runner_model.py, built-in features, --seeds seeds of
--hidden units), then run the same nightly twice on the same snapshot: GRUVIZ_TASK_RUNNER=threads,
then GRUVIZ_TASK_RUNNER=dask against a LocalCluster of --workers processes (one thread each) that
is started before the clock starts, as a standing cluster would be. Reported per runner: the
night's wall time, the extraction phase (first block start to last block end, from the blocks'
done markers), and peak RSS sampled every 50 ms during that night: the flow's process and each Dask
worker process (pids from client.run). dask_over_threads is the wall-time ratio. Every block (a thread
or a Dask worker's task) reads and normalises only its own dogs' rows of the snapshot's sequences.

--store s3 runs the Dask night against a bucket on moto's S3 server (a separate process on 127.0.0.1,
started here; every process reaches it through AWS_ENDPOINT_URL_S3), with the snapshot and the model
set ingested and registered there too; the threads night stays on the local store, so dask_over_threads
then compares the cluster path (Dask + object storage) with today's default (threads + local disk).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.chdir(REPO)  # Dask worker processes import tests.runner_model from here


class PeakRSS:
    """Samples the RSS of this process and of `pids` every 50 ms in a thread; `.peaks_mb()` once stopped."""

    def __init__(self, pids: list[int] = ()):
        self.procs = [psutil.Process()] + [psutil.Process(p) for p in pids]
        self.peak = {p.pid: 0 for p in self.procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for p in self.procs:
                try:
                    self.peak[p.pid] = max(self.peak[p.pid], p.memory_info().rss)
                except psutil.Error:
                    pass  # a worker restarting
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peaks_mb(self) -> list[float]:
        """[this process, then each of pids] peak RSS in MiB."""
        return [round(self.peak[p.pid] / 2**20, 1) for p in self.procs]


def _prepare(work: Path, homes: list[str], n_dogs: int, seeds: int, hidden: int) -> dict:
    """Simulate the dogs once (files under `work`), then ingest them and register the model set in every home."""
    import torch

    from flows.commands.model import register
    from flows.stages.ingest import ingest
    from gruviz_core.synth import simulate
    from tests.runner_model import build

    t0 = time.perf_counter()
    src = work / "forms.parquet"
    runs = simulate(n_dogs, seed=1)
    runs.to_parquet(src, index=False)
    weights = []
    for k in range(seeds):
        torch.manual_seed(k)
        weights.append(str(work / f"seed{k}.pt"))
        torch.save(build(hidden=hidden).state_dict(), weights[-1])
    for home in homes:
        ingest([str(src)], home)
        register(factory="tests.runner_model:build", weights=weights, factory_kwargs={"hidden": hidden},
                 trained_until=str(runs["race_date"].min())[:10], name="bench", current=True, home=home)
    return {"rows": len(runs), "prepare_s": round(time.perf_counter() - t0, 1)}


def _moto_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process on a free loopback port, the AWS variables pointing at it; a bucket."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"})
    import s3fs

    for _ in range(200):
        try:
            s3fs.S3FileSystem(skip_instance_cache=True).mkdir("gruviz-bench")
            break
        except Exception:  # noqa: BLE001 - the server is still starting
            time.sleep(0.1)
    else:
        proc.kill()
        raise SystemExit("moto server did not start")
    return proc, "s3://gruviz-bench/home"


def _night(night: str, worker_pids: list[int] = ()) -> dict:
    from flows.nightly import nightly
    from storage.layout import RunLayout
    from storage.store import location as store_path

    with PeakRSS(worker_pids) as rss:
        t0 = time.perf_counter()
        state = nightly(night=night, return_state=True)
        wall = time.perf_counter() - t0
    if not state.is_completed():
        raise SystemExit(f"nightly {night} ended {state.name}: {state.message}")
    run_dir = store_path(state.result()["run_dir"])
    markers = [json.loads(p.read_text()) for p in RunLayout.at(run_dir).blocks.iterdir() if p.name.endswith(".json")]
    flow_mb, *workers_mb = rss.peaks_mb()
    out = {"wall_s": round(wall, 1), "blocks": len(markers),
           "extract_s": round(max(m["finished_at"] for m in markers) - min(m["started_at"] for m in markers), 1),
           "flow_process_peak_rss_mb": flow_mb, "run_dir": run_dir.name}
    return {**out, "worker_peak_rss_mb": workers_mb} if workers_mb else out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dogs", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--block-dogs", type=int, default=None, help="GRUVIZ_BLOCK_DOGS (default the setting's)")
    ap.add_argument("--store", choices=["local", "s3"], default="local")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_API_SERVICES_SCHEDULER_ENABLED", "false")
    from distributed import Client, LocalCluster
    from prefect.testing.utilities import prefect_test_harness

    out: dict = {"bench": "cluster", "dogs": args.dogs, "workers": args.workers, "seeds": args.seeds,
                 "hidden": args.hidden, "store": args.store, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="gruviz-bench-cluster-") as tmp, prefect_test_harness(
            server_startup_timeout=240):
        home = Path(tmp) / "home"
        home.mkdir()
        moto, dask_home = _moto_server() if args.store == "s3" else (None, str(home))
        os.environ.update({"GRUVIZ_HOME": str(home), "GRUVIZ_BOOTSTRAP": "100",
                           "GRUVIZ_REPORTS_DIR": str(Path(tmp) / "reports")})
        if args.block_dogs:
            os.environ["GRUVIZ_BLOCK_DOGS"] = str(args.block_dogs)
        for name in ("GRUVIZ_SMTP_HOST", "GRUVIZ_RECIPIENTS", "GRUVIZ_SOURCES", "GRUVIZ_DASK_ADDRESS"):
            os.environ.pop(name, None)
        out.update(_prepare(Path(tmp), sorted({str(home), dask_home}), args.dogs, args.seeds, args.hidden))
        night = dt.date(2026, 11, 1)

        os.environ["GRUVIZ_TASK_RUNNER"] = "threads"
        out["threads"] = _night(night.isoformat())

        t0 = time.perf_counter()
        with LocalCluster(n_workers=args.workers, processes=True, threads_per_worker=1,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            out["cluster_start_s"] = round(time.perf_counter() - t0, 1)
            os.environ.update({"GRUVIZ_TASK_RUNNER": "dask", "GRUVIZ_DASK_ADDRESS": cluster.scheduler_address,
                               "GRUVIZ_HOME": dask_home,
                               "GRUVIZ_MAX_BLOCKS_IN_FLIGHT": str(args.workers)})
            pids = sorted(client.run(os.getpid).values())
            out["dask"] = _night((night + dt.timedelta(days=1)).isoformat(), pids)
        out["dask_over_threads"] = round(out["dask"]["wall_s"] / out["threads"]["wall_s"], 3)
        out["dask_over_threads_extract"] = round(out["dask"]["extract_s"] / max(out["threads"]["extract_s"], 1e-9), 3)
        if moto is not None:
            moto.kill()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
