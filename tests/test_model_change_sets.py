"""The same held-out races under two model sets (issue 29, item 1) and the determinism watch (item 3), on a small
simulated store written by the real producers: a set compared with itself shows no change; a perturbed set does;
an unchanged dog's states are identical night to night and an altered state is flagged at its step."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from gruviz_core import model_change as mc


def _set(root, norm, n_f: int, n_c: int, *, noise: float = 0.0, base: list | None = None) -> tuple[str, list]:
    """A registered 2-seed set of tiny GRUs; `base`'s weights (+ noise) when given."""
    from gruviz_core.model import ModelConfig, RaceGRU
    from storage.registry import write_model_set

    results = []
    for s in range(2):
        torch.manual_seed(s)
        cfg = ModelConfig(n_f, n_c, hidden_size=8, head_hidden=8, seed=s)
        m = RaceGRU(cfg)
        with torch.no_grad():
            m.gru.weight_ih_l0.mul_(3)  # some units near saturation, so plateaus and statuses vary
        sd = {k: v.clone() for k, v in (base[s] if base is not None else m.state_dict()).items()}
        if noise:
            g = torch.Generator().manual_seed(100 + s)
            sd = {k: v + noise * torch.randn(v.shape, generator=g) * (v.std() if v.numel() > 1 else 1.0)
                  for k, v in sd.items()}
        results.append(SimpleNamespace(seed=s, state_dict=sd, config=cfg, curve=pd.DataFrame({"epoch": [0]}),
                                       metrics={}, best_epoch=0))
    set_id = write_model_set(root, {"snapshot_id": "snap", "seeds": [0, 1]}, results, norm, results[0].config,
                             make_current=False)
    return set_id, [r.state_dict for r in results]


def _extract(root, set_id: str, seqs, run_id: str, night: str):
    from flows.stages.extract import extract_run
    from storage.registry import load_model_set

    ms = load_model_set(root, set_id)
    v, c = ms.prepare(seqs)
    meta = {"snapshot_id": "snap", "model_set_id": set_id, "night": night, "run_id": run_id}
    return extract_run(root, run_id, meta, ms.models, seqs_values=v, context=c, offsets=seqs.offsets,
                       dog_id=seqs.dog_id, dog_name=seqs.dog_name, race_id=seqs.race_id, race_date=seqs.race_date,
                       won=seqs.won, market_prob=seqs.market_prob, device="cpu", chunk_rows=64, shard_chunks=4)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Set A, set B = A (same weights, another id), set C = A perturbed; tonight's run under A; the sequences."""
    from gruviz_core.features import build_sequences, fit_normaliser
    from gruviz_core.synth import simulate
    from storage.sequences import save_sequences

    root = tmp_path_factory.mktemp("mc-store")
    seqs = build_sequences(simulate(150, seed=4))
    norm = fit_normaliser(seqs)
    n_f, n_c = len(seqs.feature_names), len(seqs.context_names)
    a, weights = _set(root, norm, n_f, n_c)
    b, _ = _set(root, norm, n_f, n_c, base=weights)
    c, _ = _set(root, norm, n_f, n_c, base=weights, noise=0.5)
    seq_path = root / "seq.zarr"
    save_sequences(seqs, seq_path)
    tmp = _extract(root, a, seqs, "tonight", "2026-11-25")
    return SimpleNamespace(root=root, seqs=seqs, a=a, b=b, c=c, seq_path=seq_path, tmp=tmp)


def _compare(store, previous: str, **kw) -> dict:
    from flows.stages.model_change import same_races

    return same_races(store.tmp, store.root, store.a, previous, store.seq_path, n_boot=200, **kw)


def test_a_set_against_itself_changes_nothing(store):
    rec = _compare(store, store.b)
    assert rec["races"] > 50 and rec["dogs"] > 100
    nums = {r["number"]: r for r in rec["numbers"]}
    for label in ("race NLL, seed ensemble", "race NLL, seed 0", "gap to the market, seed ensemble"):
        assert abs(nums[label]["change"]) < 1e-5 and abs(nums[label]["lo"]) < 1e-5 and abs(nums[label]["hi"]) < 1e-5
    assert rec["disagreement"]["ensemble"]["value"] == 0.0 and rec["disagreement"]["seed0"]["value"] == 0.0
    agree = [r for r in rec["status_agreement"] if r["n"] > 0]
    assert agree and all(r["agreement"] == 1.0 for r in agree)
    assert rec["cka"] and all(r["cka"] > 0.999 for r in rec["cka"])
    assert all(r["cka_perm"] < 0.5 for r in rec["cka"])  # what unrelated dogs give


def test_a_perturbed_set_disagrees_with_an_interval_above_zero(store):
    rec = _compare(store, store.c)
    dis = rec["disagreement"]["ensemble"]
    assert dis["value"] > 0 and dis["lo"] > 0
    nums = {r["number"]: r for r in rec["numbers"]}
    assert abs(nums["race NLL, seed ensemble"]["change"]) > 1e-4
    assert min(r["cka"] for r in rec["cka"]) < 0.999
    assert rec["numbers"][0]["number"] != "race NLL, market"  # largest change first; the market never moves
    assert abs(rec["numbers"][0]["change"]) >= abs(rec["numbers"][-1]["change"] or 0.0)


def test_the_sample_is_whole_races_and_bounded():
    rng = np.random.default_rng(0)
    race = np.repeat(np.arange(200), 6)
    dog = rng.integers(0, 400, len(race))
    keep = mc.pick_races(race, dog, 60, seed=1)
    assert 0 < len(np.unique(dog[keep])) <= 60
    assert all(keep[race == r].all() or not keep[race == r].any() for r in np.unique(race))
    assert mc.pick_races(race, dog, 1, seed=1).sum() == 6  # at least one race, whole


def _published(store, run_id: str, night: str, set_id: str):
    from storage.runs import publish_run

    tmp = _extract(store.root, set_id, store.seqs, run_id, night)
    return publish_run(store.root, tmp)


def test_the_stage_records_a_change_and_an_unloadable_set_without_failing(store, tmp_path):
    from flows.stages import model_change as stage
    from reports.sections.model_change import model_change_sections
    from storage.layout import RunLayout, StoreLayout
    from storage.results import read_run_results

    _published(store, "last-night-c", "2026-11-24", store.c)
    rec = stage.run(store.tmp, store.root, store.a, store.seq_path, dogs=80, n_boot=100)
    assert rec["changed"] and rec["same_races"]["error"] is None and rec["same_races"]["dogs"] <= 80
    line = stage.email_lines(store.tmp)["Model set"]
    assert line.startswith(f"a new model set, {store.a}, took over from {store.c}") and "same" in line
    (section,) = model_change_sections(read_run_results(store.tmp, tables=()))
    titles = [p.title for p in section.panels]
    assert titles[0] == "The two sets on the same races" and "The two sets' states (CKA)" in titles
    assert section.panels[0].table.rows

    last = RunLayout.at(StoreLayout.at(store.root).run("last-night-c")).run_json
    meta = json.loads(last.read_text())
    last.write_text(json.dumps({**meta, "model_set_id": "20260101T000000Z-gone"}))  # a set no longer registered
    try:
        rec = stage.run(store.tmp, store.root, store.a, store.seq_path, dogs=80, n_boot=100)
    finally:
        last.write_text(json.dumps(meta))
    assert rec["changed"] and "could not be loaded" in rec["same_races"]["error"]
    assert "not compared on the same races" in stage.email_lines(store.tmp)["Model set"]
    (section,) = model_change_sections(read_run_results(store.tmp, tables=()))
    assert "could not be loaded" in section.panels[0].note


def test_a_previous_set_reading_other_features_scores_its_own_sequences(store, tmp_path, monkeypatch):
    """A registered set with its own feature callable took over from a built-in one (Iggy, issue 29): tonight's
    sequences carry the callable's columns only; the previous set is scored on its own features of the snapshot
    (flows.stages.features.run for it), so the comparison is made, and equals the one on its own sequences."""
    import dataclasses

    from flows.stages import features
    from flows.stages import model_change as stage
    from storage.layout import RunLayout
    from storage.sequences import save_sequences

    assert json.loads(RunLayout.at(store.tmp).run_json.read_text())["snapshot_id"] == "snap"
    theirs = tmp_path / "team-seq.zarr"  # tonight's set's sequences: other column names, none of the previous set's
    save_sequences(dataclasses.replace(store.seqs, feature_names=tuple(f"team_{n}" for n in store.seqs.feature_names),
                                       context_names=tuple(f"team_{n}" for n in store.seqs.context_names)), theirs)
    team = SimpleNamespace(custom=True, key="team-v1")
    monkeypatch.setattr(features, "spec_of_set", lambda root, sid: team if sid == store.a else None)
    built = []
    monkeypatch.setattr(features, "run", lambda root, snap, sid: built.append((snap, sid)) or store.seq_path)
    if stage._record(store.tmp, store.root, store.a)["previous_set"] != store.c:  # run alone: last night under C
        _published(store, "last-night-c", "2026-11-24", store.c)
    rec = stage.run(store.tmp, store.root, store.a, theirs, dogs=80, n_boot=100)
    assert built == [("snap", store.c)]
    assert rec["changed"] and rec["same_races"]["error"] is None, rec["same_races"].get("error")
    direct = stage.same_races(store.tmp, store.root, store.a, store.c, store.seq_path, max_dogs=80, n_boot=100)
    got = {r["number"]: r["change"] for r in rec["same_races"]["numbers"]}
    assert got == pytest.approx({r["number"]: r["change"] for r in direct["numbers"]}, nan_ok=True)

    monkeypatch.setattr(features, "run", lambda root, snap, sid: (_ for _ in ()).throw(ImportError("no team29")))
    rec = stage.run(store.tmp, store.root, store.a, theirs, dogs=80, n_boot=100)
    assert "features of snapshot snap could not be built (ImportError: no team29)" in rec["same_races"]["error"]


# ------------------------------------------------------------------ the determinism watch


def test_unchanged_dogs_pass_and_an_altered_state_is_flagged_at_its_step(store, tmp_path):
    import zarr

    from flows.stages import determinism as stage
    from reports.sections.determinism import determinism_section
    from storage.layout import RunLayout
    from storage.results import read_run_results
    from storage.states import open_states

    prev = _published(store, "det-prev", "2026-11-26", store.a)
    tonight = _extract(store.root, store.a, store.seqs, "det-now", "2026-11-27")
    rec = stage.run(tonight, store.root, store.a, dogs=12)
    assert rec["checked"] and rec["source"] == "hashed sample" and rec["compared"] == 12 and rec["flagged"] == []
    assert stage.email_lines(tonight) == {}
    assert determinism_section(read_run_results(tonight, tables=())).collapsed

    reader = open_states(tonight, allow_incomplete=True)
    dog_id = rec_dog = stage.dt.hashed_sample(reader.index()["dog_id"].astype(str), 12)[3]
    d = reader.dog_index(rec_dog)
    row = int(reader.index()["row_start"].iloc[d]) + 4  # the dog's 5th race
    g = zarr.open_group(str(RunLayout.at(tonight).states), mode="r+")
    h = g["seed1/h"]
    h[row] = h[row] + np.float16(0.25)
    meta = json.loads(RunLayout.at(tonight).run_json.read_text())
    RunLayout.at(tonight).run_json.write_text(json.dumps({**meta, "code_version": "9.9+changed"}))

    rec = stage.run(tonight, store.root, store.a, dogs=12)
    (flag,) = rec["flagged"]
    assert flag["dog_id"] == dog_id and flag["first_step"] == 5 and flag["seed"] == 1 and flag["arrays"] == ["h"]
    assert any(c.startswith("code version") and "9.9+changed" in c for c in rec["causes"])
    line = stage.email_lines(tonight)["Determinism"]
    assert dog_id in line and "first at race 5" in line and "code version" in line
    section = determinism_section(read_run_results(tonight, tables=()))
    assert not section.collapsed and section.panels[0].table.rows[0][3] == 5

    rec = stage.run(tonight, store.root, store.a, [str(reader.index()["dog_name"].iloc[d])], dogs=12)
    assert rec["source"] == "watchlist" and rec["watched"] == 1 and rec["flagged"][0]["first_step"] == 5
    assert stage.run(tonight, store.root, store.c, dogs=12)["checked"] is False  # another set: nothing to compare
    assert prev.exists()


def test_same_history_and_first_difference():
    from gruviz_core import determinism as dt

    d = np.array(["2026-01-01", "2026-01-08"], dtype="datetime64[D]")
    assert dt.same_history({"race_id": np.array(["a", "b"], object), "race_date": d},
                           {"race_id": np.array(["a", "b"], object), "race_date": d})
    assert not dt.same_history({"race_id": np.array(["a"], object), "race_date": d[:1]},
                               {"race_id": np.array(["a", "b"], object), "race_date": d})
    x = np.zeros((4, 1, 3), np.float32)
    x[2, 0, 0] = np.nan
    y = x.copy()
    assert dt.first_difference(x, y) is None  # NaN equals NaN
    y[3, 0, 1] = 1e-3
    assert dt.first_difference(x, y) == 3
    assert dt.likely_causes({"settings": {"batch_size": 1024, "recipients": []}, "device": "cpu"},
                            {"settings": {"batch_size": 512, "recipients": ["x"]}, "device": "cpu"}) == \
        ["settings: batch_size 1024 -> 512"]
    assert dt.hashed_sample(["b", "a", "c", "a"], 2) == dt.hashed_sample(["c", "a", "b"], 2)
