"""Issue 28, the CLI's own surfaces: no noise after a flow, and a clear error (never a traceback) when the
store's disk is full, read-only or unreachable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`gruviz <args>` in its own process, as a user runs it."""
    drop = {"PREFECT_API_URL", "GRUVIZ_HOME", "GRUVIZ_RECIPIENTS", "GRUVIZ_SOURCES", "GRUVIZ_SMTP_HOST"}
    full = {k: v for k, v in os.environ.items() if k not in drop}
    full.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=full, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory) -> Path:
    """A store with a forms snapshot of 60 simulated dogs and a current one-seed model set of 512 units
    (so the states' 512 KiB chunks hold 512 rows: the season's 561 rows make two shards, two blocks)."""
    import torch

    from flows.stages.ingest import run as ingest
    from flows.stages.train import train_and_register
    from gruviz_core.synth import simulate
    from gruviz_core.train import TrainConfig

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trained")
    simulate(60, 7, end="2026-11-25").to_parquet(root / "src.parquet")
    snap = ingest([str(root / "src.parquet")], root).snapshot_id
    cfg = TrainConfig(epochs=1, lr=1e-2, batch_rows=4000, chunk_dogs=256)
    train_and_register(root, snap, seeds=1, hidden=512, train_config=cfg, promote=True)
    return root


# ------------------------------------------------------------------ case 19: no noise after a flow


def test_nightly_command_ends_without_api_logging_errors_or_repeated_thread_timeout_warnings(trained_store,
                                                                                             tmp_path):
    """The temporary Prefect server is stopped after the run's logs are sent; the extraction blocks' thread
    timeout warning (covered by the night's backstop) is not repeated per block."""
    out = _cli(["nightly", "--date", "2026-11-26", "--home", str(trained_store), "--quiet"],
               {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_LOGGING_LEVEL": "INFO",
                "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "60",  # every log still queued when the flow ends
                "GRUVIZ_BLOCK_DOGS": "16", "GRUVIZ_MAX_BLOCKS_IN_FLIGHT": "2", "GRUVIZ_BOOTSTRAP": "100"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "extracting 2 block(s)" in out.stderr, out.stderr[-3000:]  # several blocks, each a task in a thread
    assert "Error logging to API" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.count("cannot interrupt blocking") <= 1, out.stderr[-3000:]


# --------------------------------------- cases 16 and 17: a full disk, a read-only store, an unreachable endpoint

FACTORY = "tests.runner_model:FaultyModel"


@pytest.fixture
def disk(tmp_path):
    """A fresh 256 KiB tmpfs (a real disk that fills up, and can be remounted read-only); skipped where this
    process may not mount one."""
    path = tmp_path / "disk"
    path.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()}): the disk cases need one (run as root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk: Path, leave: int = 0) -> None:
    """Fill `disk` up to `leave` bytes free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * max(free - leave, 0))


def _read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


def _weights(path: Path, hidden: int) -> Path:
    import torch

    from tests.runner_model import FaultyModel

    torch.manual_seed(0)
    torch.save(FaultyModel(hidden=hidden).state_dict(), path)
    return path


def _register(home: Path, weights: Path, name: str, hidden: int) -> list[str]:
    return ["model", "register", "--home", str(home), "--factory", FACTORY, "--factory-kwargs",
            f'{{"hidden": {hidden}}}', "--weights", str(weights), "--name", name, "--current"]


def _refused(capsys, rc: int, command: str, *words: str) -> str:
    """rc 2 and one `gruviz <command>: error:` paragraph naming `words`, no traceback."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"gruviz {command}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    return err


def _complete_snapshots(home: Path) -> list[str]:
    forms = home / "forms"
    return sorted(p.parent.name for p in forms.glob("*/manifest.json")) if forms.exists() else []


def test_ingest_on_a_full_disk_says_so_and_publishes_no_snapshot(disk, tmp_path, capsys):
    from flows.cli import main
    from gruviz_core.synth import simulate

    src = tmp_path / "season.parquet"
    simulate(600, 3).to_parquet(src)
    home = disk / "home"
    _fill(disk, leave=32768)  # the snapshot of 600 dogs is several times that
    rc = main(["ingest", str(src), "--home", str(home)])
    _refused(capsys, rc, "ingest", "no space left", str(home), "free space")
    assert _complete_snapshots(home) == [] and not (home / "forms" / "LATEST").exists()


def test_model_register_on_a_full_disk_says_so_and_model_list_still_lists(disk, tmp_path, capsys):
    from flows.cli import main

    home = disk / "home"
    small = _weights(tmp_path / "small.pt", 4)
    assert main(_register(home, small, "small", 4)) == 0
    capsys.readouterr()
    _fill(disk, leave=8192)  # room for the claim and a directory, not for these weights
    big = _weights(tmp_path / "big.pt", 64)
    rc = main(_register(home, big, "big", 64))
    _refused(capsys, rc, "model", "no space left", str(home), "free space")
    assert main(["model", "list", "--home", str(home)]) == 0  # listing writes nothing
    out = capsys.readouterr().out
    assert "* small" in out and "big" not in out  # the half-written set is neither listed nor current


def test_model_register_and_ingest_on_a_read_only_store_say_so_and_model_list_lists(disk, tmp_path, capsys):
    from flows.cli import main

    home = disk / "home"
    small = _weights(tmp_path / "small.pt", 4)
    assert main(_register(home, small, "small", 4)) == 0
    capsys.readouterr()
    _read_only(disk)
    rc = main(_register(home, small, "again", 4))
    _refused(capsys, rc, "model", "read-only", str(home), "read-write")
    rc = main(["ingest", str(REPO / "tests" / "fixtures" / "forms" / "thedogs_guide_a.csv"), "--home", str(home)])
    _refused(capsys, rc, "ingest", "read-only", str(home), "read-write")
    assert main(["model", "list", "--home", str(home)]) == 0
    assert "* small" in capsys.readouterr().out


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["ingest", "model list", "model register"])
def test_commands_on_an_unreachable_endpoint_name_it_and_end_soon(command, tmp_path):
    pytest.importorskip("s3fs")
    port = _closed_port()
    args = {"ingest": ["ingest", str(REPO / "tests" / "fixtures" / "forms" / "thedogs_guide_a.csv")],
            "model list": ["model", "list"],
            "model register": ["model", "register", "--factory", FACTORY, "--factory-kwargs", '{"hidden": 4}',
                               "--weights", str(_weights(tmp_path / "w.pt", 4))]}[command]
    import time

    t0 = time.monotonic()
    out = _cli(args, {"GRUVIZ_HOME": "s3://bucket/x", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
                      "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"},
               timeout=120)
    took = time.monotonic() - t0
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"127.0.0.1:{port}" in out.stderr and "s3://bucket/x" in out.stderr, out.stderr
    assert took < 30, f"{took:.0f} s"


# ------------------------------------------ case 17, second half: a canonical file with no result column


def test_ingest_names_a_canonical_file_with_no_result_column(tmp_path, capsys):
    """Its rows are kept (a result may be unknown: upcoming, scratched, void), but ingest says which file has
    neither `won` nor `finish_pos` and how many rows, instead of the features stage failing later, unnamed."""
    import json

    import pandas as pd

    from flows.cli import main

    full = REPO / "tests" / "fixtures" / "forms" / "canonical_small.csv"
    bare = tmp_path / "no_results.csv"
    pd.read_csv(full).drop(columns=["won", "finish_pos"]).assign(
        race_id=lambda d: "n" + d["race_id"]).to_csv(bare, index=False)
    rows = len(pd.read_csv(bare)) - 2  # accepted: canonical_small's rows with no dog_id or 'not a date' are not
    assert main(["ingest", str(full), str(bare), "--home", str(tmp_path / "home"), "--json"]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["warnings"]["no_result_column"] == rows
    assert summary["files_without_result"] == {str(bare): rows}
    assert f"{bare}: no result column (won or finish_pos)" in out.err and f"{rows} accepted rows" in out.err
    assert str(full) not in out.err


# ------------------------------------------ case 11, second half: store reads have timeouts


@pytest.mark.slow
def test_a_frozen_object_store_fails_a_read_instead_of_hanging(monkeypatch):
    """An S3 endpoint that accepts connections and never answers (a frozen server): a read ends with an error
    within the client's timeouts; before, an explorer request waited for over 200 s."""
    import socket
    import threading
    import time

    pytest.importorskip("s3fs")
    import s3fs

    from storage import objects

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_hold() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # never answers
            except OSError:
                continue

    threading.Thread(target=accept_and_hold, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{listener.getsockname()[1]}")
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(objects, "_S3_TIMEOUTS", {**objects._S3_TIMEOUTS, "read_timeout": 2})
    s3fs.S3FileSystem.clear_instance_cache()
    store = objects.ObjectStore("s3://frozen/home")
    t0 = time.monotonic()
    try:
        with pytest.raises(Exception) as info:
            store.read_bytes("runs/LATEST")
    finally:
        stop.set()
        for c in held:
            c.close()
        listener.close()
        s3fs.S3FileSystem.clear_instance_cache()
    took = time.monotonic() - t0
    assert took < 30, f"{took:.0f} s"
    assert "timeout" in f"{type(info.value).__name__} {info.value}".lower(), repr(info.value)  # not 'missing'

