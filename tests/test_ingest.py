"""Ingest: snapshots, accounting identity, content-addressed ids, errors through the CLI, the real Iggy files."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.cli import main
from gruviz_core.errors import InputError, MissingColumnError, NotFoundError, UnknownFormatError, UnreadableFileError
from gruviz_core.schema import CANONICAL_COLUMNS
from gruviz_core.synth import simulate
from storage.forms import ingest, latest_snapshot, load_rejects, load_snapshot, read_manifest

FIX = Path(__file__).parent / "fixtures" / "forms"


def _balanced(s) -> None:
    assert s.rows_in == s.accepted + s.rejected + s.duplicates_merged


def test_fixture_dir_snapshot(tmp_path):
    s = ingest([str(FIX)], tmp_path)
    _balanced(s)
    assert s.rows_in == 43 and len(s.files) == 6
    assert s.duplicates_merged == 3  # PIN UP twice in one market, two past starts repeated in a second form guide
    assert s.rejects_by_reason == {"bad_date": 1, "bad_result": 1, "missing_dog_id": 1, "not_run": 4}
    assert latest_snapshot(tmp_path) == s.snapshot_id
    snap = tmp_path / "forms" / s.snapshot_id
    assert sorted(p.name for p in snap.iterdir()) == ["manifest.json", "rejects.parquet", "runs.parquet"]
    runs = load_snapshot(tmp_path, s.snapshot_id)
    assert list(runs.columns) == list(CANONICAL_COLUMNS) and len(runs) == s.accepted
    assert not runs.duplicated(["race_id", "dog_id"]).any()
    assert set(runs["source"]) == {"canonical", "iggy", "thedogs", "gbgb"}
    assert runs.equals(runs.sort_values(["race_date", "race_id", "box", "dog_id"]).reset_index(drop=True))
    rejects = load_rejects(tmp_path)
    assert list(rejects.columns) == ["source_file", "source_row", "reason", "raw"] and len(rejects) == s.rejected
    scratched = rejects[rejects["source_file"].str.endswith("iggy_v2_2024_08.csv")].iloc[0]
    assert scratched["source_row"] == 4 and scratched["reason"] == "not_run"
    assert json.loads(scratched["raw"])["Dog"] == "Party Bus"
    manifest = read_manifest(tmp_path)
    assert manifest["balanced"] and manifest["rows_in"] == 43 and manifest["snapshot_id"] == s.snapshot_id
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    assert manifest["sources"] == ["canonical", "gbgb", "iggy", "thedogs"]


def test_snapshot_id_is_content_addressed(tmp_path):
    a = ingest([str(FIX)], tmp_path / "a")
    again = ingest([str(FIX)], tmp_path / "a")
    assert again.snapshot_id == a.snapshot_id
    # same files elsewhere, listed one by one in another order
    copy = tmp_path / "copy"
    shutil.copytree(FIX, copy)
    files = sorted(copy.iterdir(), reverse=True)
    b = ingest([str(f) for f in files], tmp_path / "b")
    assert b.snapshot_id == a.snapshot_id
    # different content, different id
    c = ingest([str(FIX / "gbgb_results.csv")], tmp_path / "b")
    assert c.snapshot_id != a.snapshot_id and latest_snapshot(tmp_path / "b") == c.snapshot_id


def test_sources_gz_parquet_glob(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with gzip.open(src / "iggy.csv.gz", "wb") as f:
        f.write((FIX / "iggy_2024_01.csv").read_bytes())
    runs = simulate(30, seed=1)
    runs.to_parquet(src / "synth.parquet", index=False)
    s = ingest([str(src / "*.csv.gz"), str(src / "synth.parquet")], tmp_path / "home")
    _balanced(s)
    assert s.rows_in == 7 + len(runs) and s.rejected == 2
    got = load_snapshot(tmp_path / "home")
    synth = got[got["source"] == "synth"].reset_index(drop=True)
    expected = runs.sort_values(["race_date", "race_id", "box", "dog_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(synth, expected)


def test_format_named_explicitly(tmp_path):
    s = ingest([str(FIX / "gbgb_results.csv")], tmp_path, fmt="gbgb")
    assert s.accepted == 7
    with pytest.raises(MissingColumnError, match="gbgb_results.csv"):
        ingest([str(FIX / "gbgb_results.csv")], tmp_path, fmt="iggy")


def test_errors(tmp_path):
    with pytest.raises(UnreadableFileError, match="nothing-here.csv"):
        ingest([str(tmp_path / "nothing-here.csv")], tmp_path)
    with pytest.raises(InputError, match="no .csv"):
        ingest([str(tmp_path)], tmp_path)
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(UnreadableFileError, match="empty.csv"):
        ingest([str(tmp_path / "empty.csv")], tmp_path)
    (tmp_path / "bad.csv.gz").write_bytes(b"this is not gzip")
    with pytest.raises(UnreadableFileError, match="bad.csv.gz"):
        ingest([str(tmp_path / "bad.csv.gz")], tmp_path)
    (tmp_path / "odd.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UnknownFormatError, match="odd.csv"):
        ingest([str(tmp_path / "odd.csv")], tmp_path)
    with pytest.raises(NotFoundError, match="no forms snapshot"):
        load_snapshot(tmp_path / "nowhere")
    assert latest_snapshot(tmp_path / "nowhere") is None


@pytest.mark.parametrize(
    "content, name, message",
    [
        ("Date,Track,Race Name,MarketId,Dog,WIN_RESULT\n2024-01-01,Sale,R1 300m Gr5,1,Dog,1\n", "norug.csv", r"norug\.csv.*Rug"),
        ("x,y\n1,2\n", "unknown.csv", r"unknown\.csv.*not recognised"),
        (b"\x1f\x8b\x08garbage", "broken.csv.gz", r"broken\.csv\.gz.*cannot be read"),
    ],
)
def test_cli_errors_exit_2_naming_the_file(tmp_path, capsys, content, name, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["ingest", str(path), "--home", str(tmp_path / "home")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gruviz ingest: error: ")
    assert re.search(message, err), err


def test_cli_unknown_format_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse refuses it before anything runs
        main(["ingest", str(FIX), "--format", "nope", "--home", str(tmp_path)])
    assert exc.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_cli_json(tmp_path, capsys):
    assert main(["ingest", str(FIX), "--json", "--home", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows_in"] == out["accepted"] + out["rejected"] + out["duplicates_merged"]
    for key in ("snapshot_id", "dogs", "races", "rejects_by_reason"):
        assert key in out
    assert main(["ingest", str(FIX), "--home", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert f"snapshot {out['snapshot_id']}" in text and "rows_in 43 = accepted" in text


# ---------------------------------------------------------------- fuzz: the identity holds for any rows

_cell = st.one_of(
    st.just(""),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"), max_size=10),
    st.sampled_from(["<i>Dog</i>", "Señor Rápido", "1=", "F", "$2.80F", "11/10F", "EVS", "9", "10", "99999", "-5",
                     "1e308", "nan", "True", "2024-01-01", "5/08/2024", "Saturday 15th February 2020", "D1", "D2", "c:1"]),
    st.integers(-1000, 10**6).map(str),
)
_COLS = ["dog_id", "dog_name", "race_id", "race_date", "track", "distance_m", "box", "finish_pos", "won", "sp_decimal",
         "run_time_s", "weight_kg"]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.lists(_cell, min_size=len(_COLS), max_size=len(_COLS)), min_size=1, max_size=10),
    dup=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_fuzz_accounting_identity(rows, dup, seed):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rows, columns=_COLS)
    df = pd.concat([df, df.iloc[: dup]], ignore_index=True)  # duplicated rows
    df = df[list(rng.permutation(_COLS))]  # shuffled columns
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "fuzz.csv"
        df.to_csv(src, index=False)
        n_rows = len(pd.read_csv(src, dtype=str, keep_default_na=False))
        s = ingest([str(src)], Path(d) / "home")
        _balanced(s)
        assert s.rows_in == n_rows
        assert len(load_snapshot(Path(d) / "home")) == s.accepted
        assert len(load_rejects(Path(d) / "home")) == s.rejected


# ---------------------------------------------------------------- the real files


@pytest.mark.realdata
@pytest.mark.slow
def test_real_iggy_files(iggy_dir, tmp_path):
    s = ingest([str(iggy_dir)], tmp_path)
    _balanced(s)
    assert len(s.files) == len(list(iggy_dir.glob("*.csv.gz")))
    assert s.rows_in > 500_000 and s.accepted > 0.95 * s.rows_in
    assert set(s.rejects_by_reason) == {"not_run"}
    assert 25_000 < s.dogs < 30_000 and 60_000 < s.races < 75_000
    runs = load_snapshot(tmp_path)
    assert runs["race_date"].notna().all() and runs["distance_m"].notna().mean() > 0.99
    assert runs["box"].between(1, 10).all() and runs["field_size"].between(1, 12).all()
    # one winner per race, give or take dead heats and void results
    winners = runs.groupby("race_id")["won"].sum()
    assert (winners == 1).mean() > 0.97
    per_dog = runs.groupby("dog_id").size()
    assert 8 <= per_dog.median() <= 16 and per_dog.max() <= 150
    # the d/m/Y month is read day first: no race lands in an impossible month
    assert runs["race_date"].dt.year.between(2024, 2026).all()
