"""The model registry: train and register, reload with the same scores, CURRENT, cached sequences, BYO, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from flows.byo import load_byo
from flows.cli import main as cli
from flows.stages.features import run as ensure_sequences
from flows.stages.ingest import ingest
from flows.stages.train import model_set_scores, train_and_register
from gruviz_core.errors import (
    AmbiguousGRUError,
    ConfigError,
    FeatureMismatchError,
    NoGRUError,
    NotFoundError,
    StoreError,
)
from gruviz_core.features import CONTEXT_NAMES, FEATURE_NAMES, MARKET_CONTEXT
from gruviz_core.model import ModelConfig, RaceGRU
from gruviz_core.racing import race_codes
from gruviz_core.synth import simulate
from gruviz_core.train import TrainConfig, TrainData, time_windows, validation_metrics
from storage.registry import current_model_set, list_model_sets, load_model_set
from storage.sequences import load_sequence_meta, load_sequence_rows, load_sequences

TINY = TrainConfig(epochs=2, lr=1e-2, batch_rows=4000, chunk_dogs=256)
OURS = ("won", "box", "implied_prob")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two busy cores shared by several jobs: one intra-op thread is much faster than two fighting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def store(one_thread, tmp_path_factory):
    """A store with one synthetic snapshot and one trained 2-seed model set."""
    root = tmp_path_factory.mktemp("store")
    src = root / "src.parquet"
    simulate(120, 3).to_parquet(src)
    snap = ingest([str(src)], root).snapshot_id
    report = train_and_register(root, snap, seeds=2, hidden=8, layers=2, train_config=TINY)
    return root, snap, report


def test_train_registers_a_complete_set_and_marks_it_current(store):
    root, snap, report = store
    assert current_model_set(root) == report.set_id and list_model_sets(root) == [report.set_id]
    d = root / "models" / report.set_id
    for seed in (0, 1):
        for f in ("model.pt", "config.json", "features.json", "curve.parquet", "metrics.json"):
            assert (d / f"seed_{seed}" / f).is_file()
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["snapshot_id"] == snap and manifest["seeds"] == [0, 1]
    assert not any((root / "models" / ".tmp").iterdir())
    out = report.to_dict()
    assert set(out["per_seed"]) == {"0", "1"} and out["uniform"]["n_rows"] == out["n_val_rows"]
    assert out["market"]["log_loss"] > 0 and out["timings"]["per_epoch_s"] > 0
    test = manifest["test"]  # the test window (after early_stop_end) is reported and kept in the registry
    assert test["ensemble"]["n_rows"] == out["n_test_rows"] > 0 and set(test["per_seed"]) == {"0", "1"}
    assert test["vs"]["market"]["diff"]["race_log_loss"] == pytest.approx(
        test["vs"]["market"]["model"]["race_log_loss"] - test["vs"]["market"]["baseline"]["race_log_loss"])


def test_seeds_in_parallel_processes_match_serial_training(store, tmp_path):
    root, snap, report = store
    again = train_and_register(root, snap, seeds=2, hidden=8, layers=2, train_config=TINY, workers=2,
                               make_current=False)
    assert again.set_id != report.set_id and current_model_set(root) == report.set_id
    for seed in ("0", "1"):
        assert again.per_seed[seed]["model"] == report.per_seed[seed]["model"]


def test_reloaded_checkpoints_give_the_stored_metrics(store):
    root, snap, report = store
    ms = load_model_set(root, report.set_id)
    assert ms.seeds == [0, 1] and ms.models[0].gru.num_layers == 2
    seqs = load_sequences(ensure_sequences(root, snap))
    scores = model_set_scores(ms, seqs)  # (obs, seed)
    assert scores.shape == (seqs.n_obs, 2) and np.isfinite(scores).all()
    values, context = ms.prepare(seqs)
    _, _, train, val = time_windows(seqs.race_date, TINY.val_frac, TINY.test_frac)  # as the train stage splits
    data = TrainData(values, context, seqs.offsets, race_codes(seqs.race_id), seqs.won, seqs.market_prob,
                     train, val, np.zeros(seqs.n_dogs, dtype=np.int64))
    for k, seed in enumerate(ms.seeds):
        stored = json.loads((root / "models" / ms.set_id / f"seed_{seed}" / "metrics.json").read_text())
        again = validation_metrics(scores[:, k], data)
        assert again["model"]["log_loss"] == pytest.approx(stored["model"]["log_loss"], rel=1e-6)


def test_sequences_are_cached(store):
    root, snap, _ = store
    path = ensure_sequences(root, snap)
    assert path.name == "sequences.zarr"
    before = (path / "_COMPLETE").stat().st_mtime_ns
    assert ensure_sequences(root, snap) == path and (path / "_COMPLETE").stat().st_mtime_ns == before


def test_a_store_with_only_the_old_npz_cache_is_rebuilt(store, tmp_path):
    """Sequences cached by an older gruviz (features/<snapshot>/sequences.npz) are not read: the features stage
    builds the Zarr store (the same rows as building them now) and drops the old file."""
    import shutil

    root, snap, _ = store
    old = tmp_path / "old"
    shutil.copytree(root / "forms", old / "forms")
    legacy = old / "features" / snap / "sequences.npz"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"PK\x03\x04 an npz of another version")
    path = ensure_sequences(old, snap)
    assert path == old / "features" / snap / "sequences.zarr" and not legacy.exists()
    again, now = load_sequences(path), load_sequences(ensure_sequences(root, snap))
    np.testing.assert_array_equal(again.values, now.values)
    assert list(again.race_id) == list(now.race_id) and list(again.dog_name) == list(now.dog_name)


def test_a_block_reads_and_prepares_only_its_rows(store, tmp_path):
    """extract.inputs reads rows [a, b) of the sequences store: the same normalised inputs as preparing every
    row and slicing."""
    from flows.stages import extract

    root, snap, report = store
    ms = load_model_set(root, report.set_id)
    path = ensure_sequences(root, snap, report.set_id)
    seqs = load_sequences(path)
    values, context = ms.prepare(seqs)
    n = seqs.n_obs
    for a, b in ((0, 1), (17, 230), (n - 5, n), (40, 40)):
        v, c, rows = extract.inputs(str(path), ms, a, b)
        assert list(rows["race_id"]) == list(seqs.race_id[a:b]) and np.array_equal(rows["won"], seqs.won[a:b], True)
        assert v.dtype == np.float32 and v.shape == (b - a, values.shape[1])
        np.testing.assert_array_equal(v, values[a:b])
        np.testing.assert_array_equal(c, context[a:b])
    meta = load_sequence_meta(path)
    assert np.array_equal(meta["offsets"], seqs.offsets) and list(meta["dog_name"]) == list(seqs.dog_name)
    with pytest.raises(StoreError, match=rf"rows {n - 2}\.\.{n + 3}"):
        load_sequence_rows(path, n - 2, n + 3)


def test_unknown_set_and_empty_registry_are_clear_errors(store, tmp_path):
    root, _, _ = store
    with pytest.raises(NotFoundError, match="no model set 'nope'"):
        load_model_set(root, "nope")
    with pytest.raises(NotFoundError, match="gruviz train"):
        load_model_set(tmp_path)


# ------------------------------------------------------------------ bring your own model


class ByoModel(nn.Module):
    """A user's model: its own GRU over 3 of our features, reading the market context."""

    def __init__(self, n_features: int = len(OURS), hidden: int = 6, layers: int = 2, n_gru: int = 1):
        super().__init__()
        self.encoder = nn.ModuleDict({"rnn": nn.GRU(n_features, hidden, layers, batch_first=True)})
        if n_gru == 2:
            self.other = nn.GRU(n_features, hidden, batch_first=True)
        self.out = nn.Linear(hidden + len(CONTEXT_NAMES), 1)

    def forward(self, x, ctx):
        h, _ = self.encoder["rnn"](x)
        return self.out(torch.cat([h, ctx], dim=-1)).squeeze(-1)


class NoGru(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)

    def forward(self, x, ctx):
        return self.lstm(x)[0].sum(-1)


def make_byo(**kw) -> nn.Module:
    torch.manual_seed(0)
    return ByoModel(**kw)


def test_byo_factory_with_state_dicts(tmp_path, store):
    root, snap, _ = store
    paths = []
    for k in range(2):
        torch.manual_seed(k)
        p = tmp_path / f"seed{k}.pt"
        torch.save(ByoModel().state_dict(), p)
        paths.append(p)
    ms = load_byo(factory="tests.test_registry:make_byo", state_dict=paths, feature_names=OURS)
    assert ms.seeds == [0, 1] and ms.models[0].gru_path == "encoder.rnn" and ms.set_id.startswith("byo-")
    seqs = load_sequences(ensure_sequences(root, snap))
    values, context = ms.prepare(seqs)
    assert values.shape == (seqs.n_obs, 3) and context.shape == (seqs.n_obs, len(CONTEXT_NAMES))
    scores = model_set_scores(ms, seqs)
    assert scores.shape == (seqs.n_obs, 2) and not np.allclose(scores[:, 0], scores[:, 1])
    out = ms.models[0].run(torch.from_numpy(values[None, :7]), torch.from_numpy(context[None, :7]))
    assert out.gru_output.shape == (1, 7, 6)


def test_byo_error_cases():
    with pytest.raises(NoGRUError):
        load_byo(factory="tests.test_registry:NoGru", feature_names=OURS)
    with pytest.raises(AmbiguousGRUError, match="gru_path"):
        load_byo(factory="tests.test_registry:make_byo", factory_kwargs={"n_gru": 2}, feature_names=OURS)
    ms = load_byo(factory="tests.test_registry:make_byo", factory_kwargs={"n_gru": 2}, feature_names=OURS,
                  gru_path="encoder.rnn")
    assert ms.models[0].gru_path == "encoder.rnn"
    with pytest.raises(FeatureMismatchError, match="reads 3 features"):
        load_byo(factory="tests.test_registry:make_byo", feature_names=OURS + ("box_missing",))
    with pytest.raises(FeatureMismatchError, match="no_such_feature"):
        load_byo(factory="tests.test_registry:make_byo", feature_names=("won", "box", "no_such_feature"))
    with pytest.raises(ConfigError, match="package.module:callable"):
        load_byo(factory="not-a-spec")


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_byo_torchscript(tmp_path):
    torch.manual_seed(1)
    cfg = ModelConfig(len(FEATURE_NAMES), len(CONTEXT_NAMES), hidden_size=5, num_layers=2, seed=1)
    eager = RaceGRU(cfg).eval()
    path = tmp_path / "model.ts"
    torch.jit.script(eager).save(str(path))
    ms = load_byo(script=path)
    m = ms.models[0]
    assert m.extra["scripted_gru_path"] == "gru" and m.gru.num_layers == 2
    x, c = torch.randn(3, 9, len(FEATURE_NAMES)), torch.randn(3, 9, len(CONTEXT_NAMES))
    with torch.no_grad():
        out = m.run(x, c)
        h, _ = eager.gru(x)
        torch.testing.assert_close(out.scores, eager(x, c))
    torch.testing.assert_close(out.gru_output, h)
    bad = tmp_path / "nogru.ts"
    torch.jit.script(NoGru()).save(str(bad))
    with pytest.raises(NoGRUError, match="no torch.nn.GRU"):
        load_byo(script=bad, feature_names=OURS)
    with pytest.raises(FeatureMismatchError):
        load_byo(script=path, feature_names=OURS)


def test_cli_train_prints_json(store, capsys, prefect_harness):
    root, snap, _ = store
    rc = cli(["train", "--home", str(root), "--snapshot", snap, "--seeds", "1", "--hidden", "4", "--epochs", "1", "--promote",
              "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seeds"] == [0] and current_model_set(root) == out["set_id"]
    assert {"model", "model_priced"} <= set(out["per_seed"]["0"]) and "market" in out
    ms = load_model_set(root)  # form only: the price is a baseline, not an input
    assert not set(MARKET_CONTEXT) & set(ms.context_names)
    values, context = ms.prepare(load_sequences(ensure_sequences(root, snap)))
    assert context.shape[1] == len(CONTEXT_NAMES) - len(MARKET_CONTEXT)


def test_cli_train_without_snapshot_is_a_clear_error(tmp_path, capsys, prefect_harness):
    assert cli(["train", "--home", str(tmp_path)]) == 2  # the preflight refuses before any work
    assert "gruviz ingest" in capsys.readouterr().err
