"""Bring your own model: `gruviz model register` with the docs' team model (its own module, its own
feature callable, 2 seeds), the nightly run on it, and registrations that are refused with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from flows.cli import main as cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def team_module_on_path():
    """docs/examples holds the team's module, as a team's own package would be on PYTHONPATH."""
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(REPO / "docs" / "examples"))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A store with one small simulated snapshot, and the team's weights (2 seeds) beside it."""
    import team_model

    from flows.stages.ingest import ingest
    from gruviz_core.synth import simulate

    root = tmp_path_factory.mktemp("byo-home")
    src = root / "forms.parquet"
    simulate(150, seed=5).to_parquet(src, index=False)
    ingest([str(src)], root)
    for k in (0, 1):
        torch.manual_seed(k)
        torch.save(team_model.build().state_dict(), root / f"team_seed{k}.pt")
    return root


def _register(home: Path, *extra: str) -> list[str]:
    return ["model", "register", "--home", str(home), "--factory", "team_model:build",
            "--weights", str(home / "team_seed0.pt"), str(home / "team_seed1.pt"), *extra]


def test_register_the_team_model_and_run_the_nightly_on_it(home, capsys, monkeypatch, prefect_harness):
    from storage.registry import current_model_set, load_model_set
    from storage.states import open_states

    rc = cli(_register(home, "--feature-fn", "team_model:features", "--trained-until", "2023-03-01",
                       "--name", "team-v1", "--current", "--json"))
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["set_id"] == "team-v1" and current_model_set(home) == "team-v1"
    assert out["seeds"] == [0, 1] and (out["layers"], out["units"]) == (2, 12)
    assert out["gru_path"] == "encoder.rnn" and out["trained_until"] == "2023-03-01"
    assert out["feature_spec"]["callable"] == "team_model:features" and out["feature_spec"]["version"] == "1.0"
    assert out["validation"]["dogs"] > 0 and out["validation"]["max_err"] <= 1e-5

    ms = load_model_set(home)  # like a trained set: from the registry's own copy of the weights
    assert ms.feature_spec.custom and ms.feature_names[:2] == ("won", "log_place")
    assert not torch.equal(ms.models[0].gru.weight_hh_l1, ms.models[1].gru.weight_hh_l1)

    assert cli(["model", "list", "--home", str(home), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(s["set_id"], s["kind"], s["current"]) for s in listed] == [("team-v1", "byo", True)]

    monkeypatch.setenv("GRUVIZ_BLOCK_DOGS", "100")
    monkeypatch.delenv("GRUVIZ_RECIPIENTS", raising=False)
    monkeypatch.delenv("GRUVIZ_SOURCES", raising=False)
    rc = cli(["nightly", "--home", str(home), "--date", "2026-12-01", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0, result.get("message")
    assert result["model_set_id"] == "team-v1" and Path(result["report"]).exists()
    reader = open_states(result["run_dir"])
    assert reader.seeds == [0, 1]
    assert reader.meta["model_trained_until"] == "2023-03-01" and not reader.meta["comparisons_may_be_in_sample"]
    h = reader.dog_at(0, seed=1).h
    assert h.shape[1:] == (2, 12) and np.isfinite(h).all() and np.abs(h).max() < 1.0
    custom = list((home / "features").glob("*/custom-*/sequences.zarr"))
    assert len(custom) == 1  # the team's features, cached apart from gruviz's


class NoGru(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 4, batch_first=True)

    def forward(self, x, ctx):
        return self.lstm(x)[0].sum(-1)


def bad_scores():
    """A GRU model whose head returns one score per dog instead of one per race."""
    import team_model

    class PerDog(team_model.TeamModel):
        def forward(self, x, ctx):
            return super().forward(x, ctx).sum(-1)

    return PerDog()


def sorted_features(runs):
    """The team's features computed on the runs sorted by date: rows no longer the input's rows in its order."""
    import team_model

    feats, ctx = team_model.features(runs)
    feats.index = ctx.index = runs.index
    order = runs.sort_values("race_date", kind="stable").index
    return feats.loc[order], ctx.loc[order]


def inf_features(runs):
    """A feature callable whose column holds +inf (NaN means missing; inf is not a value)."""
    import team_model

    feats, ctx = team_model.features(runs)
    feats.loc[feats.index[3], "km"] = np.inf
    return feats, ctx


def inf_bias():
    """The team's model with an infinite GRU bias: every state 0, every update gate 1."""
    import team_model

    model = team_model.build()
    with torch.no_grad():
        model.encoder["rnn"].bias_ih_l0[0] = float("inf")
    return model


@pytest.mark.parametrize("argv, message", [
    (["--factory", "team_model:build", "--feature-fn", "tests.test_byo:sorted_features"],
     "not the input's rows in the input's order"),
    (["--factory", "team_model:build", "--feature-fn", "tests.test_byo:inf_features"], "'km' holds inf"),
    (["--factory", "tests.test_byo:inf_bias", "--feature-fn", "team_model:features"],
     "non-finite (NaN or inf) weights in encoder.rnn.bias_ih_l0"),
    (["--factory", "team_model:build", "--feature-fn", "team_model:features", "--snapshot", "../../etc"],
     "not a plain id"),
    (["--factory", "team_model:build", "--feature-fn", "team_model:features", "--snapshot", "nope"],
     "no such forms snapshot"),

    (["--factory", "tests.test_byo:NoGru", "--feature-fn", "team_model:features"], "no torch.nn.GRU"),
    (["--factory", "team_model:build", "--features", "won,box,log_place"], "reads 6 features"),
    (["--factory", "team_model:build", "--weights", "MISSING/seed0.pt", "--feature-fn", "team_model:features"],
     "seed0.pt does not exist"),
    (["--factory", "tests.test_byo:bad_scores", "--feature-fn", "team_model:features"], "expected (B, T)"),
    (["--factory", "team_model:build", "--feature-fn", "team_model:nope"], "has no attribute 'nope'"),
    (["--factory", "team_model:build", "--feature-fn", "team_model:features", "--trained-until", "March"],
     "not a date"),
])
def test_bad_registrations_name_the_problem(home, capsys, argv, message):
    from storage.registry import list_model_sets

    before = list_model_sets(home)
    rc = cli(["model", "register", "--home", str(home), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert list_model_sets(home) == before  # nothing half-registered


class Pickled:
    """Not a tensor: torch.load(weights_only=True) refuses it (and torch's own message advises turning that off)."""


@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes"),  # was EOFError: 'gruviz: interrupted', exit 130
    (None, "not a PyTorch state dict of tensors"),
    (b"not a torch file at all", "not a PyTorch state dict of tensors"),
])
def test_unloadable_weights_are_refused_without_unsafe_advice(home, tmp_path, capsys, content, message):
    weights = tmp_path / "seed0.pt"
    if content is None:
        torch.save({"encoder.rnn.weight_ih_l0": Pickled()}, weights)
    else:
        weights.write_bytes(content)
    rc = cli(["model", "register", "--home", str(home), "--factory", "team_model:build", "--weights", str(weights),
              "--feature-fn", "team_model:features"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "seed0.pt" in err, err
    assert "weights_only" not in err and "Traceback" not in err


def raising_factory():
    raise RuntimeError("CUDA out of memory while building")


def not_a_module():
    return {"rnn": "not a module"}


@pytest.mark.parametrize("extra, message", [
    (["--factory", "tests.test_byo:raising_factory"], "model factory tests.test_byo:raising_factory raised RuntimeError"),
    (["--factory", "tests.test_byo:not_a_module"], "returned a dict, not a torch.nn.Module"),
    (["--factory", "./team_model.py:build"], "is not a module name"),
    (["--factory", "team_model:build", "--factory-kwargs", '{"hidden": 12, "nope": 1}'],
     "model factory team_model:build does not take these arguments"),
    (["--factory", "team_model:build", "--normaliser", "{tmp}/missing.json"], "missing.json does not exist"),
    (["--factory", "team_model:build", "--normaliser", "{tmp}/empty.json"], "empty.json is not a gruviz normaliser"),
    (["--factory", "team_model:build", "--normaliser", "{tmp}/bad.json"], "bad.json is not a gruviz normaliser"),
])
def test_register_errors_are_one_line(home, tmp_path, capsys, extra, message):
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "bad.json").write_text('{"mean": [1, 2')
    argv = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    rc = cli(["model", "register", "--home", str(home), "--feature-fn", "team_model:features", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_model_list_flags_a_damaged_manifest_and_lists_the_others(tmp_path, capsys):
    models = tmp_path / "models"
    for sid, text in (("good", json.dumps({"kind": "byo", "seeds": [0], "layers": 1, "units": 4,
                                           "feature_spec": {"feature_names": ["won"], "context_names": []}})),
                      ("bad", '{"kind": "byo", "seeds": [0')):
        (models / sid).mkdir(parents=True)
        (models / sid / "manifest.json").write_text(text)
    assert cli(["model", "list", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "good" in out and "byo" in out
    bad = next(line for line in out.splitlines() if "bad" in line)
    assert "damaged" in bad and "manifest.json" in bad
    assert cli(["model", "list", "--home", str(tmp_path), "--json"]) == 0
    listed = {s["set_id"]: s for s in json.loads(capsys.readouterr().out)}
    assert listed["bad"]["kind"] == "damaged" and "manifest.json" in listed["bad"]["error"]


def test_a_feature_callable_changed_under_the_same_version_is_refused_at_the_nightly(home, tmp_path, monkeypatch):
    """The docs promise a changed callable is noticed; its source changing under one __version__ was only logged."""
    import sys

    from flows.stages import features
    from gruviz_core.errors import FeatureMismatchError
    from storage.forms import latest_snapshot

    source = (REPO / "docs" / "examples" / "team_model.py").read_text()
    (tmp_path / "team_feats.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli(_register(home, "--feature-fn", "team_feats:features", "--name", "feats-v1")) == 0
    (tmp_path / "team_feats.py").write_text(source.replace("/ 8.0", "/ 6.0"))  # same __version__ = "1.0"
    monkeypatch.delitem(sys.modules, "team_feats", raising=False)
    with pytest.raises(FeatureMismatchError, match="team_feats:features: its source changed since .* 1.0"):
        features.run(str(home), latest_snapshot(home), "feats-v1")


class _Scripted(nn.Module):
    """A GRU over 3 gruviz features and a head over the context; `project` puts a Linear before the GRU."""

    def __init__(self, project: bool):
        from gruviz_core.features import CONTEXT_NAMES

        super().__init__()
        self.proj = nn.Linear(3, 3) if project else nn.Identity()
        self.rnn = nn.GRU(3, 4, batch_first=True)
        self.head = nn.Linear(4 + len(CONTEXT_NAMES), 1)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.proj(x))
        h_prev = nn.functional.pad(h, (0, 0, 1, 0))[:, :-1]
        return self.head(torch.cat([h_prev, ctx], dim=-1)).squeeze(-1)


@pytest.mark.parametrize("project", [False, True])
def test_torchscript_gru_must_read_x_as_given(home, tmp_path, capsys, project):
    """A scripted model with a projection before its GRU: the eager copy's states differed by up to 1.87."""
    import warnings

    from gruviz_core.byo import scripted_gru_output
    from gruviz_core.features import CONTEXT_NAMES

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        script = torch.jit.script(_Scripted(project))
    x = torch.randn(2, 5, 3)
    got = scripted_gru_output(script, "rnn", x, torch.zeros(2, 5, len(CONTEXT_NAMES)))  # TorchScript's graph API
    assert got is not None and got.shape == (2, 5, 4)
    script.save(str(tmp_path / "model.ts"))
    rc = cli(["model", "register", "--home", str(home), "--script", str(tmp_path / "model.ts"),
              "--features", "won,box,log_place", "--name", f"ts-{int(project)}"])
    err = capsys.readouterr().err
    if project:
        assert rc == 2 and "does not read x as given" in err and "'rnn'" in err, err
    else:
        assert rc == 0, err
