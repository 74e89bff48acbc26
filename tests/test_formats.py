"""Format adapters: field parsers on tables of real-world spellings, each adapter on its own fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.sources import read_source
from gruviz_core.errors import MissingColumnError, UnknownFormatError
from gruviz_core.formats import (
    REASONS,
    adapt,
    detect_format,
    display_name,
    normalise_name,
    parse_dates,
    parse_margin,
    parse_place,
    parse_price,
)
from gruviz_core.schema import CANONICAL_COLUMNS

FIX = Path(__file__).parent / "fixtures" / "forms"


def _adapt(name: str, fmt: str | None = None):
    return adapt(read_source(FIX / name), fmt, where=name)


def _row(runs: pd.DataFrame, dog_id: str, race_id: str) -> pd.Series:
    hit = runs[(runs["dog_id"] == dog_id) & (runs["race_id"] == race_id)]
    assert len(hit) >= 1, (dog_id, race_id)
    return hit.iloc[0]


# ---------------------------------------------------------------- parsers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2024-01-05", "2024-01-05"),
        ("2020-02-15T18:04:00", "2020-02-15"),
        ("2020-02-15 00:00:00", "2020-02-15"),
        ("5/08/2024", "2024-08-05"),
        ("05/08/24", "2024-08-05"),
        ("Saturday 15th February 2020", "2020-02-15"),
        ("1st Mar 2021", "2021-03-01"),
        ("22nd December 2019", "2019-12-22"),
        ("31/02/2020", None),
        ("not a date", None),
        ("", None),
        ("1066-10-14", None),
        # issue 18 item 10: four-digit years as written, two-digit years by POSIX %y (never 2099)
        ("0001-01-01", None),
        ("0024-01-05", None),
        ("5/08/99", "1999-08-05"),
        ("5/08/68", "2068-08-05"),
        ("5/08/69", None),  # 1969: before the window
        ("Saturday 15th February 20", "2020-02-15"),
        ("5/08/202", None),
        ("2100-01-01", None),
    ],
)
def test_parse_dates(text, expected):
    got = parse_dates(pd.Series([text], dtype="string")).iloc[0]
    assert (pd.isna(got) and expected is None) or got == pd.Timestamp(expected)


@pytest.mark.parametrize(
    "text, expected",
    [("$2.80F", 2.8), ("2.8", 2.8), ("11/10F", 2.1), ("5/2", 3.5), ("6/4JF", 2.5), ("EVS", 2.0), ("Evens", 2.0),
     ("EvensF", 2.0), (" $21.00 ", 21.0), ("1/0", None), ("$1.00", None), ("abc", None), ("", None), ("-3", None)],
)
def test_parse_price(text, expected):
    got = parse_price(pd.Series([text], dtype="string")).iloc[0]
    assert (pd.isna(got) and expected is None) or got == pytest.approx(expected)


@pytest.mark.parametrize(
    "text, pos, state",
    [("1", 1, "finished"), ("1=", 1, "finished"), ("3=", 3, "finished"), ("2nd", 2, "finished"), ("3.0", 3, "finished"),
     ("F", None, "dnf"), ("DNF", None, "dnf"), ("t", None, "dnf"), ("", None, "empty"), ("0", None, "bad"),
     ("9x", None, "bad"), ("99", None, "bad")],
)
def test_parse_place(text, pos, state):
    p, s = parse_place(pd.Series([text], dtype="string"))
    assert s.iloc[0] == state
    assert (pd.isna(p.iloc[0]) and pos is None) or p.iloc[0] == pos


@pytest.mark.parametrize(
    "text, expected",
    [("2.75", 2.75), ("2.75L", 2.75), ("1 1/2", 1.5), ("3/4", 0.75), ("Hd", 0.2), ("SHD", 0.1), ("NSE", 0.05),
     ("Nk", 0.3), ("DH", 0.0), ("DIS", None), ("", None), ("500", None)],
)
def test_parse_margin(text, expected):
    got = parse_margin(pd.Series([text], dtype="string")).iloc[0]
    assert (pd.isna(got) and expected is None) or got == pytest.approx(expected)


@pytest.mark.parametrize(
    "raw, key, shown",
    [("PIN UP", "PIN UP", "Pin Up"), ("pin  up ", "PIN UP", "Pin Up"), ("McDonald's Joy", "MCDONALD'S JOY", "McDonald's Joy"),
     ("O'BRIEN'S PET", "O'BRIEN'S PET", "O'Brien's Pet"), ("<b>Bold</b> Move", "<B>BOLD</B> MOVE", "<b>Bold</b> Move"),
     ("SEÑOR RÁPIDO", "SEÑOR RÁPIDO", "Señor Rápido")],
)
def test_names(raw, key, shown):
    s = pd.Series([raw], dtype="string")
    assert normalise_name(s).iloc[0] == key
    assert display_name(s).iloc[0] == shown


def test_implausible_dates_rejected_with_their_own_reason():
    raw = pd.DataFrame({"race_id": ["c:1"] * 5, "dog_id": ["D1", "D2", "D3", "D4", "D5"], "dog_name": ["A", "B", "C", "D", "E"],
                        "track": ["Sale"] * 5,
                        "race_date": ["0001-01-01", "31/02/2020", "not a date", "1/1/99", "2024-03-01"]}, dtype="string")
    a = adapt(raw, "canonical")
    assert a.rejects.set_index("source_row")["reason"].to_dict() == {1: "implausible_date", 2: "bad_date", 3: "bad_date"}
    assert list(a.runs["race_date"]) == [pd.Timestamp("1999-01-01"), pd.Timestamp("2024-03-01")]
    typed = raw.assign(race_date=pd.to_datetime(["1970-01-01", "2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04"]))
    assert adapt(typed, "canonical").rejects["reason"].tolist() == ["implausible_date"]


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize(
    "name, fmt",
    [("iggy_v2_2024_08.csv", "iggy"), ("iggy_2024_01.csv", "iggy"), ("thedogs_guide_a.csv", "thedogs"),
     ("gbgb_results.csv", "gbgb"), ("canonical_small.csv", "canonical")],
)
def test_detect_format(name, fmt):
    assert detect_format(read_source(FIX / name).columns) == fmt


def test_unknown_format_names_the_file():
    with pytest.raises(UnknownFormatError, match="mystery.csv"):
        adapt(pd.DataFrame({"a": ["1"], "b": ["2"]}), where="mystery.csv")
    with pytest.raises(UnknownFormatError, match="nope"):
        adapt(pd.DataFrame({"a": ["1"]}), "nope", where="x.csv")


def test_missing_column_names_file_and_column():
    raw = read_source(FIX / "iggy_2024_01.csv").drop(columns=["Rug"])
    with pytest.raises(MissingColumnError, match=r"iggy_2024_01.csv.*Rug"):
        adapt(raw, where="iggy_2024_01.csv")


# ---------------------------------------------------------------- adapters on their fixtures


def _check_partition(raw_len: int, a) -> None:
    rows = sorted(a.runs["source_row"].tolist() + a.rejects["source_row"].tolist())
    assert rows == list(range(1, raw_len + 1))
    assert set(a.warnings["source_row"]) <= set(a.runs["source_row"])  # warnings only on kept rows
    assert list(a.runs.columns[: len(CANONICAL_COLUMNS)]) == list(CANONICAL_COLUMNS)
    assert set(a.rejects["reason"]) <= set(REASONS)


def test_iggy_v2_day_first_dates_reserves_and_scratchings():
    a = _adapt("iggy_v2_2024_08.csv")
    _check_partition(10, a)
    runs = a.runs
    assert set(runs["source"]) == {"iggy"}
    assert a.rejects.set_index("source_row")["reason"].to_dict() == {4: "not_run"}
    pin = _row(runs, "PIN UP", "bf:231426077")
    assert pin["race_date"] == pd.Timestamp("2024-08-05") and pin["won"] and pin["finish_pos"] == 1
    assert pin["distance_m"] == 295 and pin["grade"] == "C0" and pin["box"] == 4 and pin["bsp_decimal"] == 2.9
    assert pin["field_size"] == 5  # six listed, one scratched
    assert _row(runs, "RESERVE ROCKET", "bf:231426077")["box"] == 9
    assert _row(runs, "SECOND RESERVE", "bf:231426077")["box"] == 10
    # `R2 457 M5`: distance without the m
    second = _row(runs, "HOMEBUSH YOGI", "bf:231426078")
    assert second["distance_m"] == 457 and second["grade"] == "M5" and second["race_date"] == pd.Timestamp("2024-08-12")
    assert not _row(runs, "WAVE DANCER", "bf:231426078")["won"]
    assert pd.isna(_row(runs, "WAVE DANCER", "bf:231426078")["finish_pos"])
    assert _row(runs, "PIN UP", "bf:231426078")["field_size"] == 3  # a dog listed twice counts once
    assert runs[["run_time_s", "sp_decimal", "weight_kg"]].isna().all().all()


def test_iggy_v1_without_early_speed_and_bad_result():
    a = _adapt("iggy_2024_01.csv")
    _check_partition(7, a)
    assert a.rejects.set_index("source_row")["reason"].to_dict() == {1: "not_run", 7: "bad_result"}
    # the same dog in upper and title case is one dog
    assert set(a.runs.loc[a.runs["dog_id"] == "HUDSON PINK", "dog_name"]) == {"Hudson Pink"}
    assert (a.runs["dog_id"] == "HUDSON PINK").sum() == 2
    assert _row(a.runs, "SHIMA LYRIC", "bf:223079800")["grade"] == "Gr4/5"


def test_thedogs_names_carry_down_places_and_prices():
    a = _adapt("thedogs_guide_a.csv")
    _check_partition(6, a)
    runs = a.runs
    assert a.rejects.set_index("source_row")["reason"].to_dict() == {6: "not_run"}
    assert (runs["dog_id"] == "ZIPPING ROSIE").sum() == 3  # name on the first row only
    rosie = runs[runs["dog_id"] == "ZIPPING ROSIE"].set_index("race_date")
    win = rosie.loc[pd.Timestamp("2024-01-12")]
    assert win["won"] and win["finish_pos"] == 1 and win["sp_decimal"] == 2.8 and win["margin_lengths"] == 0.0
    assert win["weight_kg"] == 27.1 and win["run_time_s"] == 29.55 and win["sectional_s"] == 5.51 and win["box"] == 4
    fell = rosie.loc[pd.Timestamp("2023-12-29")]
    assert pd.isna(fell["finish_pos"]) and not fell["won"]  # `F`: fell, no place
    eddie = runs[runs["dog_id"] == "FAST EDDIE"].set_index("race_date")
    assert eddie.loc[pd.Timestamp("2024-01-12"), "finish_pos"] == 1  # `1=` dead heat
    assert eddie.loc[pd.Timestamp("2024-01-12"), "sp_decimal"] == pytest.approx(2.1)  # 11/10
    assert eddie.loc[pd.Timestamp("2024-01-05"), "sp_decimal"] == 2.0  # EVS
    # the two dead-heaters share the race (no race id in a form guide: it is built from the race's facts)
    assert eddie.loc[pd.Timestamp("2024-01-12"), "race_id"] == win["race_id"]


def test_thedogs_latin1_and_long_dates():
    raw = read_source(FIX / "thedogs_guide_b_latin1.csv")
    a = adapt(raw, where="b")
    _check_partition(5, a)
    senor = a.runs[a.runs["dog_id"] == "SEÑOR RÁPIDO"]
    assert set(senor["dog_name"]) == {"Señor Rápido"}
    assert pd.Timestamp("2024-01-19") in set(senor["race_date"])  # "Friday 19th January 2024"
    assert a.runs["box"].max() == 10


def test_gbgb_results():
    a = _adapt("gbgb_results.csv")
    _check_partition(8, a)
    runs = a.runs
    assert a.rejects.set_index("source_row")["reason"].to_dict() == {6: "not_run"}
    hero = _row(runs, "gbgb:548001", "gbgb:1750001")
    assert hero["race_date"] == pd.Timestamp("2020-02-15") and hero["track"] == "Romford"
    assert hero["won"] and hero["sp_decimal"] == pytest.approx(2.1) and hero["distance_m"] == 480
    assert hero["grade"] == "A4" and hero["box"] == 1 and hero["margin_lengths"] == 0.0 and hero["field_size"] == 5
    assert _row(runs, "gbgb:548002", "gbgb:1750001")["dog_name"] == "Ballymac Éire"
    bold = _row(runs, "gbgb:548003", "gbgb:1750001")
    assert bold["dog_name"] == "<b>Bold</b> Move" and bold["sp_decimal"] == 2.0  # EVS
    assert bold["finish_pos"] == 3 and bold["margin_lengths"] == pytest.approx(2.7)  # 2 1/2 + Hd
    assert _row(runs, "gbgb:548004", "gbgb:1750001")["margin_lengths"] == pytest.approx(2.7)  # dead heat
    slow = _row(runs, "gbgb:548005", "gbgb:1750001")
    assert pd.isna(slow["finish_pos"]) and not slow["won"]
    assert _row(runs, "gbgb:548001", "gbgb:1750002")["race_date"] == pd.Timestamp("2020-02-22")


def test_canonical_csv():
    a = _adapt("canonical_small.csv")
    _check_partition(7, a)
    assert a.rejects.set_index("source_row")["reason"].to_dict() == {6: "missing_dog_id", 7: "bad_date"}
    runs = a.runs
    assert _row(runs, "D2", "c:1")["dog_name"] == "Bravo Two" and _row(runs, "D2", "c:1")["sp_decimal"] == 4.0
    assert _row(runs, "D3", "c:1")["race_date"] == pd.Timestamp("2024-03-01")
    assert pd.isna(_row(runs, "D3", "c:1")["won"])
    assert _row(runs, "D2", "c:2")["won"]  # derived from finish_pos 1
    assert set(runs["source"]) == {"canonical"}


# ---------------------------------------------------------------- fuzz: every row accepted or rejected, never a crash

_cell = st.one_of(
    st.just(""),
    st.text(max_size=12),
    st.sampled_from(["<b>x</b>", "Señor Rápido", "ÉIRE", "1=", "F", "$2.80F", "11/10F", "EVS", "9", "10", "-1", "1e308",
                     "nan", "inf", "NaN", "True", "2024-01-01", "5/08/2024", "Saturday 15th February 2020", "31/02/2020"]),
    st.integers(-10**9, 10**9).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(["canonical", "iggy", "thedogs", "gbgb"]),
    rows=st.lists(st.lists(_cell, min_size=20, max_size=20), min_size=0, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_fuzz_rows_partition(fmt, rows, seed):
    header = list(read_source(FIX / {"canonical": "canonical_small.csv", "iggy": "iggy_v2_2024_08.csv",
                                      "thedogs": "thedogs_guide_a.csv", "gbgb": "gbgb_results.csv"}[fmt]).columns)
    raw = pd.DataFrame([r[: len(header)] + [""] * (len(header) - len(r)) for r in rows], columns=header, dtype="string")
    raw = raw[list(np.random.default_rng(seed).permutation(header))]  # shuffled columns
    a = adapt(raw, fmt, where="fuzz")
    _check_partition(len(raw), a)


# ---------------------------------------------------------------- Iggy places (PLACE_RESULT)

_IGGY = "Date,Track,Race Name,Race,MarketId,SelectionId,Rug,Dog,Rated Price,WIN_RESULT,WIN_BSP,PLACE_RESULT,PLACE_BSP,WIN_VALUE\n"


def _iggy_rows(market: str, results: list[tuple[str, str, str]]) -> str:
    return "".join(f"2025-01-01,Sale,R1 400m Gr5,1,{market},{i},{i + 1},{dog},5.0,{win},5.0,{place},2.0,0\n"
                   for i, (dog, win, place) in enumerate(results))


def test_iggy_place_result_sets_placed_and_certain_second_places(tmp_path):
    text = _IGGY + (
        # three places paid: second and third cannot be told apart
        _iggy_rows("1", [("A1", "1", "1"), ("B1", "0", "1"), ("C1", "0", "1")] + [(f"X{i}", "0", "0") for i in range(5)])
        # two places paid: the other placed dog came second
        + _iggy_rows("2", [("A2", "0", "1"), ("B2", "1", "1"), ("C2", "0", "0"), ("D2", "0", "0"), ("E2", "0", "0")])
        # no place market (a field of four): nobody placed, even the winner
        + _iggy_rows("3", [("A3", "1", "0"), ("B3", "0", "0"), ("C3", "0", "0"), ("D3", "0", "0")])
        # dead heat for first: no certain second
        + _iggy_rows("4", [("A4", "1", "1"), ("B4", "1", "1"), ("C4", "0", "0"), ("D4", "0", "0"), ("E4", "0", "0")])
        # a winner whose place leg says 0 is placed all the same; a scratching has no result
        + _iggy_rows("5", [("A5", "1", "0"), ("B5", "0", "1"), ("C5", "0", "0"), ("D5", "0", "0"), ("E5", "", "")])
    )
    (tmp_path / "places.csv").write_text(text)
    a = adapt(read_source(tmp_path / "places.csv"), where="places.csv")
    runs = a.runs.set_index("dog_id")
    pos = {k: None if pd.isna(v) else int(v) for k, v in runs["finish_pos"].items()}
    placed = {k: None if pd.isna(v) else bool(v) for k, v in runs["placed"].items()}
    assert [pos[d] for d in ("A1", "B1", "C1", "X0")] == [1, None, None, None]
    assert [placed[d] for d in ("A1", "B1", "C1", "X0")] == [True, True, True, False]
    assert [pos[d] for d in ("A2", "B2", "C2")] == [2, 1, None]
    assert [placed[d] for d in ("A2", "B2", "C2")] == [True, True, False]
    assert pos["A3"] == 1 and all(placed[d] is None for d in ("A3", "B3", "C3", "D3"))
    assert [pos[d] for d in ("A4", "B4", "C4")] == [1, 1, None]
    assert [pos[d] for d in ("A5", "B5")] == [1, 2] and placed["A5"] and placed["B5"]
    # won stays what WIN_RESULT says, and finish_pos never contradicts it
    assert (runs["won"] == (runs["finish_pos"] == 1).fillna(False)).all()
    assert a.rejects["reason"].tolist() == ["not_run"]


def test_placed_given_or_derived_from_place_and_field():
    raw = pd.DataFrame({"race_id": ["c:1"] * 4, "dog_id": ["D1", "D2", "D3", "D4"], "dog_name": ["A", "B", "C", "D"],
                        "track": ["Sale"] * 4, "race_date": ["2024-03-01"] * 4, "finish_pos": ["1", "2", "3", ""],
                        "field_size": ["7", "7", "8", "8"]}, dtype="string")
    assert adapt(raw).runs["placed"].tolist() == [True, True, True, pd.NA]
    given = adapt(raw.assign(placed=["1", "0", "", "yes"])).runs["placed"]
    assert given.tolist() == [True, False, pd.NA, True]


def test_iggy_race_name_without_space_before_grade():
    raw = read_source(FIX / "iggy_2024_01.csv").assign(**{"Race Name": "R12 352mHeat"})
    runs = adapt(raw).runs
    assert set(runs["distance_m"]) == {352} and set(runs["grade"]) == {"Heat"}


# ---------------------------------------------------------------- identity by id (issue 13 item 3)


def test_gbgb_empty_names_fall_back_to_the_id():
    raw = read_source(FIX / "gbgb_results.csv")
    raw["dogName"] = ""
    a = adapt(raw, where="gbgb")
    assert a.rejects.set_index("source_row")["reason"].to_dict() == {6: "not_run"}
    assert _row(a.runs, "gbgb:548001", "gbgb:1750001")["dog_name"] == "548001"
    assert a.runs["name_from_id"].all()
    # no name column at all, and no id either
    a = adapt(raw.drop(columns=["dogName"]).assign(dogId=["", *raw["dogId"][1:]]), where="gbgb")
    assert a.rejects.set_index("source_row")["reason"].to_dict() == {1: "missing_dog_name", 6: "not_run"}


def test_canonical_id_without_name_is_accepted():
    raw = read_source(FIX / "canonical_small.csv")
    raw.loc[0, "dog_name"] = " "
    a = adapt(raw)
    d1 = a.runs[a.runs["dog_id"] == "D1"]
    assert list(d1["dog_name"]) == ["D1", "Alpha One"] and list(d1["name_from_id"]) == [True, False]


def test_thedogs_dog_id_column_is_the_identity():
    raw = read_source(FIX / "thedogs_guide_a.csv")
    raw.insert(1, "Dog Id", ["77", "", "", "", "", ""])  # the id on the first row only, like the name
    raw.loc[3, "Dog Name"] = ""  # Fast Eddie's block: no name and no id -> not a continuation of Rosie
    raw.loc[3, "Dog Id"] = "88"
    a = adapt(raw, where="guide")
    ids = a.runs.set_index("source_row")["dog_id"].to_dict()
    assert ids[1] == ids[2] == ids[3] == "td:77" and ids[4] == ids[5] == "td:88"
    names = a.runs.set_index("source_row")["dog_name"].to_dict()
    assert names[1] == "Zipping Rosie" and names[4] == "88"
    # ids on every row: a new id starts a new dog even without a name
    raw["Dog Id"] = ["77", "77", "77", "88", "88", "88"]
    assert adapt(raw).runs.set_index("source_row")["dog_id"].to_dict() == ids


# ---------------------------------------------------------------- provenance: one table, many files


def test_many_files_in_one_table_never_mix():
    one = read_source(FIX / "thedogs_guide_a.csv")
    # the second file starts with a dog's earlier start, its name row lost: it must not inherit ZIPPING ROSIE's
    two = one.iloc[[1, 2, 3, 4]].reset_index(drop=True)
    both = pd.concat([one.assign(_file=0, _row=range(1, 7)), two.assign(_file=1, _row=range(1, 5))], ignore_index=True)
    a = adapt(both)
    rej = a.rejects.set_index(["source_file", "source_row"])["reason"].to_dict()
    assert rej == {(0, 6): "not_run", (1, 1): "missing_dog_name", (1, 2): "missing_dog_name"}
    alone = adapt(one)
    pd.testing.assert_frame_equal(a.runs[a.runs["source_file"] == 0].reset_index(drop=True), alone.runs)


def test_extra_fields_are_rejected_not_shifted():
    raw = read_source(FIX / "canonical_small.csv")
    raw["_extra"] = ["", '["x"]', "", "", "", "", ""]
    a = adapt(raw)
    assert a.rejects.set_index("source_row")["reason"].to_dict() == {2: "extra_fields", 6: "missing_dog_id", 7: "bad_date"}


def test_unparseable_values_of_kept_rows_are_counted():
    raw = read_source(FIX / "thedogs_guide_a.csv")
    raw.loc[0, "WGT"] = "heavy"
    raw.loc[1, "BOX"] = "12"
    raw.loc[2, "SP"] = "-"  # a spelling of 'no value': not counted
    raw.loc[5, "WGT"] = "abc"  # a rejected row (not run): its cells are in the rejects, not a warning
    a = adapt(raw)
    assert a.warnings.set_index("source_row")["warning"].to_dict() == {1: "bad_weight_kg", 2: "bad_box"}
    assert pd.isna(a.runs.set_index("source_row").loc[1, "weight_kg"])
