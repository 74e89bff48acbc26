"""Ingest: snapshots, accounting identity, content-addressed ids, errors through the CLI, the real Iggy files."""

from __future__ import annotations

import gzip
import json
import os
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
from flows.sources import read_forms
from flows.stages.ingest import ingest
from gruviz_core.errors import InputError, MissingColumnError, NotFoundError, UnknownFormatError, UnreadableFileError
from gruviz_core.schema import CANONICAL_COLUMNS
from gruviz_core.synth import simulate
from gruviz_core.synth_forms import HEADER, form_guides
from storage.forms import latest_snapshot, load_rejects, load_snapshot, read_manifest

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
    assert main(["ingest", str(FIX), "--format", "nope", "--home", str(tmp_path)]) == 2  # refused at parse time
    err = capsys.readouterr().err
    assert "gruviz ingest: error:" in err and "'nope' is not one of" in err and "'iggy'" in err
    assert not (tmp_path / "forms").exists()


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
        forms = read_forms([str(src)])
        _balanced(forms.summary)
        assert forms.summary.rows_in == n_rows
        try:
            s = ingest([str(src)], Path(d) / "home")
        except InputError as exc:  # no row accepted: the gate names the file and LATEST stays unset
            assert forms.summary.accepted == 0 and "fuzz.csv" in str(exc)
            assert latest_snapshot(Path(d) / "home") is None
            return
        assert s == forms.summary
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
    # PLACE_RESULT: placed runs are kept, second places where the place market makes them certain
    assert runs["placed"].notna().mean() > 0.99 and runs["placed"].mean() > 0.3
    second = runs["finish_pos"] == 2
    assert second.sum() > 25_000 and (runs.loc[second, "placed"] & ~runs.loc[second, "won"]).all()
    assert (runs["won"] == (runs["finish_pos"] == 1).fillna(False)).all()
    assert set(s.warnings) <= {"bad_bsp_decimal"}  # a few BSPs of `inf`, counted


# ---------------------------------------------------------------- issue 18: nothing lost on bad input

GUIDE = FIX / "thedogs_guide_a.csv"


def _lines_with(path: Path, row: int, suffix: str) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[row] += suffix
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("row", [1, 3, "all"])
def test_trailing_comma_shifts_no_column(tmp_path, row):
    """Defect 1: a trailing comma on the first data row made pandas take the first column as the index."""
    good = ingest([str(GUIDE)], tmp_path / "good")
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    bad = [ln + "," if (row == "all" and i > 0) or i == row else ln for i, ln in enumerate(lines)]
    src = tmp_path / "tc.csv"
    src.write_text("\n".join(bad) + "\n")
    s = ingest([str(src)], tmp_path / "home")
    assert (s.rows_in, s.accepted, s.rejects_by_reason) == (good.rows_in, good.accepted, good.rejects_by_reason)
    pd.testing.assert_frame_equal(load_snapshot(tmp_path / "home"), load_snapshot(tmp_path / "good"))


def test_iggy_file_with_trailing_comma_on_first_row(tmp_path):
    """The reproduction of defect 1: `sed '2s/$/,/'` on an Iggy file; every row was rejected as bad_date."""
    src = tmp_path / "tc.csv"
    src.write_text(_lines_with(FIX / "iggy_2024_01.csv", 1, ","))
    s = ingest([str(src)], tmp_path / "home")
    assert s.accepted == 5 and s.rejects_by_reason == {"bad_result": 1, "not_run": 1}


def test_extra_values_reject_the_row_with_its_cells(tmp_path):
    src = tmp_path / "extra.csv"
    src.write_text(_lines_with(GUIDE, 2, ",oops,"))
    s = ingest([str(src)], tmp_path)
    assert s.rejects_by_reason == {"extra_fields": 1, "not_run": 1} and s.accepted == 4
    rej = load_rejects(tmp_path).set_index("source_row")
    raw = json.loads(rej.loc[2, "raw"])
    assert raw["_extra"] == ["oops"] and raw["PLC"] == "3" and raw["SP"] == "$4.60"


def test_file_with_every_row_rejected_is_an_error_and_latest_stays(tmp_path, capsys):
    """Defects 1 and 8: a file none of whose rows is accepted names itself; forms/LATEST keeps the good snapshot."""
    home = tmp_path / "home"
    good = ingest([str(GUIDE)], home)
    bad = tmp_path / "all_bad.csv"
    bad.write_text("race_id,dog_id,dog_name,track,race_date\nc:1,D1,A,Sale,never\nc:1,D2,B,Sale,0001-01-01\n")
    with pytest.raises(InputError, match=r"all_bad\.csv: none of its 2 rows accepted .*bad_date 1.*implausible_date 1"):
        ingest([str(GUIDE), str(bad)], home)
    assert latest_snapshot(home) == good.snapshot_id
    assert main(["ingest", str(bad), "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert "all_bad.csv" in err and "forms/LATEST not moved" in err and good.snapshot_id in err
    assert latest_snapshot(home) == good.snapshot_id


@pytest.mark.parametrize("content", ["race_id,dog_id,dog_name,track,race_date\n", "race_id,dog_id,dog_name,track,race_date\n\n \n"])
def test_header_only_ingest_does_not_move_latest(tmp_path, capsys, content):
    """Defect 8: an empty or header-only ingest exits non-zero naming the file."""
    home = tmp_path / "home"
    good = ingest([str(GUIDE)], home)
    src = tmp_path / "header_only.csv"
    src.write_text(content)
    for sources in ([str(src)], [str(GUIDE), str(src)]):
        with pytest.raises(InputError, match=r"header_only\.csv.*no data rows"):
            ingest(sources, home)
        assert latest_snapshot(home) == good.snapshot_id
    assert main(["ingest", str(src), "--home", str(home), "--json"]) == 2
    out = capsys.readouterr()
    assert "header_only.csv" in out.err and out.out == ""


_NAMED = ("race_id,dog_id,dog_name,track,race_date,box\n"
          "c:1,D1,Zoë,Sale,2024-03-01,1\nc:1,D2,Señor Rápido,Sale,2024-03-01,2\n"
          "c:1,D3,Ballymac Éire,Sale,2024-03-01,3\nc:1,D4,Łukasz,Sale,2024-03-01,4\n")


def _mixed(text: str, latin_rows: set[int]) -> bytes:
    lines = text.splitlines()
    return b"\n".join(ln.encode("cp1252") if i in latin_rows else ln.encode("utf-8") for i, ln in enumerate(lines)) + b"\n"


@pytest.mark.parametrize(
    "encode, encoding",
    [
        (lambda t: t.encode("utf-8"), "utf-8"),
        (lambda t: b"\xef\xbb\xbf" + t.encode("utf-8"), "utf-8-sig"),
        (lambda t: t.encode("utf-16"), "utf-16-le"),  # with a BOM
        (lambda t: t.encode("utf-16-le"), "utf-16-le"),  # without one
        (lambda t: t.encode("utf-16-be"), "utf-16-be"),
        (lambda t: t.replace(",", "\t").encode("utf-16"), "utf-16-le"),  # Excel's "Unicode text": tabs
        (lambda t: t.replace("Łukasz", "Lukasz").encode("cp1252"), "cp1252"),  # a whole legacy file
        (lambda t: _mixed(t, {2}), "utf-8+cp1252"),  # one stray line of Latin-1
        (lambda t: t.encode("utf-8").replace("Señor".encode(), "Se\xf1or".encode("latin-1")), "utf-8+cp1252"),  # one byte
        (lambda t: t.encode("utf-8").replace(b"\n", b"\r\n"), "utf-8"),
    ],
)
def test_encodings_never_mangle_correct_names(tmp_path, encode, encoding):
    """Defect 4: one stray non-UTF-8 byte decoded the whole file as Latin-1 (Zoë became ZoÃ«)."""
    src = tmp_path / "names.csv"
    src.write_bytes(encode(_NAMED))
    s = ingest([str(src)], tmp_path / "home")
    names = load_snapshot(tmp_path / "home").set_index("dog_id")["dog_name"].to_dict()
    expected = {"D1": "Zoë", "D2": "Señor Rápido", "D3": "Ballymac Éire", "D4": "Łukasz"}
    if encoding == "cp1252":
        expected["D4"] = "Lukasz"
    assert names == expected
    manifest = read_manifest(tmp_path / "home")
    assert manifest["files"][0]["encoding"] == encoding
    assert (s.warnings.get("decoded_cp1252", 0) > 0) == ("cp1252" in encoding)


def test_quoted_newlines_delimiters_and_quotes(tmp_path):
    src = tmp_path / "quoted.csv"
    src.write_text('race_id,dog_id,dog_name,track,race_date,grade\n'
                   'c:1,D1,"Bold, Brave",Sale,2024-03-01,"Gr5\nheat"\n'
                   'c:1,D2,"Say ""Hi""",Sale,2024-03-01,Gr5\n'
                   'c:1,D3,"Open\n')
    with pytest.raises(UnreadableFileError, match=r"quoted\.csv.*never closed"):
        ingest([str(src)], tmp_path)
    src.write_text(src.read_text()[: -len('c:1,D3,"Open\n')])
    s = ingest([str(src)], tmp_path)
    runs = load_snapshot(tmp_path).set_index("dog_id")
    assert s.rows_in == 2 and runs.loc["D1", "dog_name"] == "Bold, Brave" and runs.loc["D2", "dog_name"] == 'Say "Hi"'
    assert runs.loc["D1", "grade"] == "Gr5\nheat"


def test_unreadable_subdirectory_is_an_error_naming_it(tmp_path, monkeypatch, capsys):
    """Defect 6: a sub-directory that cannot be listed was skipped, its files lost without a count."""
    src = tmp_path / "drop"
    (src / "sub").mkdir(parents=True)
    shutil.copy(GUIDE, src / "a.csv")
    shutil.copy(FIX / "gbgb_results.csv", src / "sub" / "b.csv")
    real = os.scandir

    def scandir(path):
        if Path(path).name == "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UnreadableFileError, match=r"drop/sub: cannot list this directory \(Permission denied\)"):
        ingest([str(src)], tmp_path / "home")
    assert main(["ingest", str(src), "--home", str(tmp_path / "home")]) == 2
    assert "drop/sub" in capsys.readouterr().err
    assert latest_snapshot(tmp_path / "home") is None


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can list any directory")
def test_unreadable_subdirectory_real_permissions(tmp_path):
    src = tmp_path / "drop"
    (src / "sub").mkdir(parents=True)
    shutil.copy(GUIDE, src / "a.csv")
    (src / "sub").chmod(0)
    try:
        with pytest.raises(UnreadableFileError, match="sub"):
            ingest([str(src)], tmp_path / "home")
    finally:
        (src / "sub").chmod(0o755)


def test_symlinked_subdirectories_are_followed(tmp_path):
    """A drop directory whose files sit under `current -> ../2025-06` was read as empty ("no new form data")."""
    src, month = tmp_path / "incoming", tmp_path / "2025-06"
    src.mkdir()
    month.mkdir()
    shutil.copy(GUIDE, src / "a.csv")
    shutil.copy(FIX / "gbgb_results.csv", month / "b.csv")
    (src / "current").symlink_to(Path("..") / "2025-06", target_is_directory=True)
    (month / "back").symlink_to(Path("..") / "incoming", target_is_directory=True)  # a cycle: walked once
    s = ingest([str(src)], tmp_path / "home")
    assert sorted(Path(f).name for f in s.files) == ["a.csv", "b.csv"]
    assert any("current" in f for f in s.files)


def test_looping_symlink_is_named_as_a_loop(tmp_path, capsys):
    src = tmp_path / "incoming"
    src.mkdir()
    shutil.copy(GUIDE, src / "a.csv")
    (src / "loop").symlink_to("loop")  # points at itself: ELOOP
    with pytest.raises(UnreadableFileError, match=r"incoming/loop: a symbolic link loop") as info:
        ingest([str(src)], tmp_path / "home")
    assert "ermission" not in str(info.value)
    assert main(["ingest", str(src), "--home", str(tmp_path / "home")]) == 2
    assert "loop" in capsys.readouterr().err


def test_dangling_symlink_to_a_form_file_is_named(tmp_path):
    src = tmp_path / "incoming"
    src.mkdir()
    shutil.copy(GUIDE, src / "a.csv")
    (src / "b.csv").symlink_to(tmp_path / "archive" / "b.csv")
    with pytest.raises(UnreadableFileError, match=r"incoming/b\.csv: a symbolic link to .*archive/b\.csv, which does not exist"):
        ingest([str(src)], tmp_path / "home")


@pytest.mark.parametrize("cut", [3, 20])  # inside the last field (still parses), or fields short
@pytest.mark.parametrize("quoted", [False, True])  # the shared parse, or a file parsed alone (quoted newline)
def test_last_line_cut_mid_write_is_rejected_with_its_reason(tmp_path, cut, quoted):
    runs = simulate(3, seed=2).head(4)
    if quoted:
        runs["dog_name"] = runs["dog_name"].astype(object)
        runs.loc[runs.index[0], "dog_name"] = "Two\nLines"
    text = runs.to_csv(index=False)
    (tmp_path / "a.csv").write_text(text[:-cut])  # the writer had not finished the last line
    s = ingest([str(tmp_path / "a.csv")], tmp_path / "home")
    _balanced(s)
    assert s.accepted == 3 and s.rejects_by_reason == {"cut_off": 1}
    rejected = load_rejects(tmp_path / "home").iloc[0]
    assert rejected["source_row"] == 4 and rejected["reason"] == "cut_off"


def test_last_line_with_its_line_end_is_a_row(tmp_path):
    text = simulate(3, seed=2).head(4).to_csv(index=False)
    (tmp_path / "a.csv").write_text(text + "\n  \n")  # blank lines after it: the last row is complete
    assert ingest([str(tmp_path / "a.csv")], tmp_path / "home").accepted == 4


def _bomb(path: Path, inflated_mb: int) -> Path:
    """A .csv.gz of a real header and `inflated_mb` MiB of one repeated row (compresses about 1000 times)."""
    text = simulate(3, seed=2).head(1).to_csv(index=False)
    header, row = text.splitlines(keepends=True)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header.encode())
        chunk = row.encode() * ((1 << 20) // len(row))
        for _ in range(inflated_mb):
            f.write(chunk)
    return path


def test_compressed_file_past_the_size_cap_is_refused(tmp_path, capsys, monkeypatch):
    """A 1 MB gzip of 1 GB took 10.7 GB of memory for 88 s and ended in a bare MemoryError."""
    from gruviz_core.formats.reader import InflateLimit

    bomb = _bomb(tmp_path / "bomb.csv.gz", 12)
    with pytest.raises(UnreadableFileError, match=r"bomb\.csv\.gz: inflates to more than 4 MiB"):
        ingest([str(bomb)], tmp_path / "home", inflate=InflateLimit(max_bytes=4 << 20))
    monkeypatch.setenv("GRUVIZ_MAX_INFLATED_MB", "4")
    assert main(["ingest", str(bomb), "--home", str(tmp_path / "home")]) == 2
    err = capsys.readouterr().err
    assert "GRUVIZ_MAX_INFLATED_MB" in err and "Traceback" not in err
    assert latest_snapshot(tmp_path / "home") is None


def test_compressed_file_past_the_ratio_is_refused(tmp_path):
    from gruviz_core.formats.reader import InflateLimit

    bomb = _bomb(tmp_path / "bomb.csv.gz", 20)
    with pytest.raises(UnreadableFileError, match=r"bomb\.csv\.gz: inflates more than 100 times"):
        ingest([str(bomb)], tmp_path / "home")  # under the default size cap, far over the ratio
    limit = InflateLimit(max_ratio=1e6)
    assert ingest([str(bomb)], tmp_path / "home", inflate=limit).duplicates_merged > 0  # acknowledged: read


def test_gzip_members_and_truncation(tmp_path):
    text = simulate(3, seed=2).head(6).to_csv(index=False)
    lines = text.splitlines(keepends=True)
    two = gzip.compress("".join(lines[:4]).encode()) + gzip.compress("".join(lines[4:]).encode())
    (tmp_path / "two.csv.gz").write_bytes(two)  # concatenated members, as `cat a.gz b.gz` makes
    assert ingest([str(tmp_path / "two.csv.gz")], tmp_path / "home").rows_in == 6
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(text.encode())[:-12])
    with pytest.raises(UnreadableFileError, match="cut.csv.gz: cannot be read"):
        ingest([str(tmp_path / "cut.csv.gz")], tmp_path / "home2")


def test_duplicated_columns_and_unparseable_values_are_counted(tmp_path):
    """Defect 10: duplicated columns and unparseable numbers were dropped without a count."""
    src = tmp_path / "dups.csv"
    src.write_text("race_id,dog_id,dog_name,track,race_date,box,weight_kg,box\n"
                   "c:1,D1,A,Sale,2024-03-01,1,30.1,1\n"  # copies agree
                   "c:1,D2,B,Sale,2024-03-01,2,heavy,5\n"  # copies disagree; a weight that is not a number
                   "c:1,D3,C,Sale,2024-03-01,,31.0,3\n")  # first copy empty: the second fills it
    s = ingest([str(src)], tmp_path)
    assert s.warnings == {"bad_weight_kg": 1, "duplicate_column_conflict": 1, "no_result_column": 3}  # no won
    manifest = read_manifest(tmp_path)
    assert manifest["warnings"] == s.warnings and manifest["files"][0]["warnings"] == s.warnings
    assert manifest["files"][0]["duplicate_columns"] == ["box"]
    runs = load_snapshot(tmp_path).set_index("dog_id")
    assert runs["box"].tolist() == [1, 2, 3] and pd.isna(runs.loc["D2", "weight_kg"])
    assert main(["ingest", str(src), "--home", str(tmp_path)]) == 0


# ---------------------------------------------------------------- issue 13 item 3: identity by id


def test_gbgb_export_with_empty_names_is_accepted_and_named_later(tmp_path, capsys):
    raw = pd.read_csv(FIX / "gbgb_results.csv", dtype=str, keep_default_na=False)
    nameless = raw.assign(dogName="")
    nameless.to_csv(tmp_path / "export.csv", index=False)
    assert main(["ingest", str(tmp_path / "export.csv"), "--home", str(tmp_path / "a"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accepted"] == 7 and "missing_dog_name" not in out["rejects_by_reason"]
    runs = load_snapshot(tmp_path / "a").set_index(["dog_id", "race_id"])
    assert runs.loc[("gbgb:548001", "gbgb:1750001"), "dog_name"] == "548001"
    # a later file names Swift Hero (in one race only): every run of the dog takes the name
    later = tmp_path / "later.csv"
    raw.iloc[[6]].to_csv(later, index=False)
    s = ingest([str(tmp_path / "export.csv"), str(later)], tmp_path / "b")
    assert s.duplicates_merged == 1 and s.accepted == 7
    runs = load_snapshot(tmp_path / "b")
    names = {d: set(g) for d, g in runs.groupby("dog_id")["dog_name"]}
    assert names["gbgb:548001"] == {"Swift Hero"} and names["gbgb:548002"] == {"548002"}


# ---------------------------------------------------------------- issue 15 item 2: many small files


def test_simulated_form_guides_hold_the_simulated_runs(tmp_path):
    runs = simulate(300, seed=4)
    fg = form_guides(runs, 40, seed=2)
    many = tmp_path / "many"
    many.mkdir()
    for name, text in fg.files.items():
        (many / name).write_text(text)
    s = ingest([str(many)], tmp_path / "home")
    _balanced(s)
    assert s.rows_in == fg.rows and s.rejected == 0 and s.accepted == len(fg.listed)
    got = load_snapshot(tmp_path / "home")
    got = got.assign(key=got["dog_id"] + got["race_date"].astype(str)).set_index("key")
    want = fg.listed.assign(key=fg.listed["dog_name"].str.upper() + fg.listed["race_date"].astype(str)).set_index("key")
    got = got.loc[want.index]
    for col in ("finish_pos", "box", "distance_m", "track", "grade", "run_time_s", "win_time_s", "weight_kg"):
        assert (got[col].to_numpy() == want[col].to_numpy()).all(), col
    assert (got["won"].to_numpy() == want["won"].to_numpy()).all()
    assert np.allclose(got["sp_decimal"].astype(float), want["sp_decimal"].astype(float))


def test_speed_per_row_does_not_depend_on_the_split(tmp_path):
    """One file per race or three big files: the same runs (the vectorised pass keeps rows of files apart)."""
    fg = form_guides(simulate(300, seed=5), 40, seed=3)
    many, few = tmp_path / "many", tmp_path / "few"
    many.mkdir()
    few.mkdir()
    for name, text in fg.files.items():
        (many / name).write_text(text)
    bodies = [t.split("\n", 1)[1] for t in fg.files.values()]
    for i in range(3):
        (few / f"part{i}.csv").write_text(HEADER + "\n" + "".join(bodies[i::3]))
    a = ingest([str(many)], tmp_path / "a")
    b = ingest([str(few)], tmp_path / "b")
    assert (a.rows_in, a.accepted, a.duplicates_merged) == (b.rows_in, b.accepted, b.duplicates_merged)
    pd.testing.assert_frame_equal(load_snapshot(tmp_path / "a"), load_snapshot(tmp_path / "b"))


def test_one_display_name_per_dog(tmp_path):
    src = tmp_path / "names.csv"
    src.write_text("race_id,dog_id,dog_name,track,race_date\n"
                   "c:1,D1,Alpha One,Sale,2024-03-01\nc:2,D1,ALPHA ONE,Sale,2024-03-02\nc:3,D1,Alpha 1,Sale,2024-03-03\n"
                   "c:1,D2,Bravo,Sale,2024-03-01\nc:2,D2,Beta,Sale,2024-03-02\n"  # a tie: alphabetical
                   "c:1,D3,,Sale,2024-03-01\n"  # only the id
                   "c:1,D4,,Sale,2024-03-01\nc:2,D4,,Sale,2024-03-02\nc:3,D4,Delta,Sale,2024-03-03\n")
    ingest([str(src)], tmp_path / "home")
    names = {d: set(g) for d, g in load_snapshot(tmp_path / "home").groupby("dog_id")["dog_name"]}
    assert names == {"D1": {"Alpha One"}, "D2": {"Beta"}, "D3": {"D3"}, "D4": {"Delta"}}


def test_rows_pandas_splits_otherwise_are_read_file_by_file(tmp_path, monkeypatch):
    """The shared parse checks pandas' row count against the lines; on a mismatch each file is read on its own."""
    from gruviz_core.formats import reader

    for f in ("thedogs_guide_a.csv", "thedogs_guide_b_latin1.csv"):
        shutil.copy(FIX / f, tmp_path / f)
    expected = read_forms([str(tmp_path)])
    monkeypatch.setattr(reader, "_parse_body", lambda body, delim, fields: pd.DataFrame(columns=range(fields)))
    got = read_forms([str(tmp_path)])
    assert got.summary == expected.summary
    pd.testing.assert_frame_equal(got.runs, expected.runs)
    pd.testing.assert_frame_equal(got.rejects, expected.rejects)
