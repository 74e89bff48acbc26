"""The `gruviz` command line (Typer): parse-time refusals, --json stdout, progress counts on stderr."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from flows.cli import main
from flows.progress import Report, listening, report, shown, wanted

FIX = Path(__file__).parent / "fixtures" / "forms"


@pytest.mark.parametrize("argv, allowed", [
    (["ingest", str(FIX), "--format", "nope"], ["'canonical'", "'gbgb'", "'iggy'", "'thedogs'"]),
    (["nightly", "--device", "gpu"], ["auto, cpu, cuda, cuda:N, mps"]),
    (["nightly", "--cohort-rule", "plateau"], ["'plateau-s'", "'tanh-f'"]),
    (["train", "--seeds", "0"], ["greater than or equal to 1"]),
])
def test_a_bad_value_is_refused_at_parse_time(tmp_path, capsys, argv, allowed):
    assert main([*argv, "--home", str(tmp_path / "home")]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert f"gruviz {argv[0]}: error: Invalid value for '{argv[-2]}'" in out.err, out.err
    for text in allowed:
        assert text in out.err, out.err
    assert not (tmp_path / "home").exists()  # refused before settings, preflight or any work


def test_unknown_command_and_option_and_exclusive_options(tmp_path, capsys):
    assert main(["bogus"]) == 2
    assert "No such command 'bogus'" in capsys.readouterr().err
    assert main(["ingest", str(FIX), "--frmat", "iggy"]) == 2
    assert "--frmat" in capsys.readouterr().err
    home = str(tmp_path / "home")
    assert main(["model", "register", "--home", home]) == 2
    assert "one of --factory or --script is required" in capsys.readouterr().err
    assert main(["model", "register", "--factory", "m:f", "--script", "a.pt", "--home", home]) == 2
    assert "--factory is not allowed with --script" in capsys.readouterr().err


def test_help_lists_every_option_with_its_help(capsys):
    assert main(["nightly", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--source", "--date", "--home", "--model-set", "--device", "--cohort-rule", "--json", "--progress"):
        assert option in text, option
    assert "torch device" in text and "plateau-s" in text
    assert main(["model", "register", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--trained-until" in text and "last race date" in text


def test_multi_value_options_keep_argparse_syntax():
    from flows.cli import _repeat_multi

    argv = ["train", "--source", "a.csv", "b.csv", "--json", "--source", "c.csv"]
    assert _repeat_multi(argv, ("--source",)) == [
        "train", "--source", "a.csv", "--source", "b.csv", "--json", "--source", "c.csv"]
    assert _repeat_multi(["ingest", "a", "b", "--json"], ()) == ["ingest", "a", "b", "--json"]


def _three_files(tmp_path: Path) -> Path:
    src = tmp_path / "drop"
    src.mkdir()
    for name in ("a.csv", "b.csv", "c.csv"):  # the same guide thrice: duplicates merge, rows count thrice
        shutil.copy(FIX / "thedogs_guide_a.csv", src / name)
    return src


def test_ingest_forced_progress_counts_on_stderr_and_json_alone_on_stdout(tmp_path, capsys):
    src = _three_files(tmp_path)
    assert main(["ingest", str(src), "--json", "--progress", "--home", str(tmp_path / "home")]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)  # stdout holds the JSON object and nothing else
    assert summary["rows_in"] > 0 and len(summary["files"]) == 3
    assert re.search(r"ingest.*\b3/3\s+files\b.*rows " + f"{summary['rows_in']:,}", out.err), out.err
    assert "{" not in out.err


def test_progress_is_off_without_a_terminal_or_with_json(tmp_path, capsys):
    src = _three_files(tmp_path)
    assert main(["ingest", str(src), "--home", str(tmp_path / "home")]) == 0
    out = capsys.readouterr()
    assert "3/3" not in out.err and "files" not in out.err  # stderr is not a terminal here
    assert out.out.startswith("snapshot ")


def test_progress_hub_reports_only_while_listening():
    seen: list[Report] = []
    report("x", 1, 2)  # nobody listens: nothing kept
    with listening(seen.append):
        report("extract", 5, 10, unit="dogs", block=0)
    report("extract", 10, 10)
    assert seen == [Report("extract", 5, 10, "dogs", {"block": 0})]

    class Tty:
        def isatty(self):
            return True

    assert wanted(stream=Tty()) and not wanted(quiet=True, stream=Tty()) and not wanted(stream=object())
    assert wanted(force=True, quiet=True, stream=object())
    with shown(False):
        report("y", 1, 1)  # no bars, no error


def test_demo_forced_progress_shows_training_epochs_and_extraction(tmp_path, capsys, monkeypatch, prefect_harness):
    """The demo end to end on a tiny season: --json keeps stdout to the result, the bars go to stderr."""
    for name, value in {"SEEDS": "1", "HIDDEN_SIZE": "4", "BOOTSTRAP": "100"}.items():
        monkeypatch.setenv(f"GRUVIZ_{name}", value)
    for name in ("RECIPIENTS", "SOURCES", "SMTP_HOST"):
        monkeypatch.delenv(f"GRUVIZ_{name}", raising=False)
    home = tmp_path / "home"
    rc = main(["demo", "--dogs", "60", "--epochs", "1", "--night", "2026-11-25", "--home", str(home), "--json",
               "--progress"])
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert rc == 0, result.get("message")
    assert result["night"] == "2026-11-25" and Path(result["report"]).exists()
    assert re.search(r"train seed 0\b.*\b1/1\s+epochs\b.*val_loss \d+\.\d{4}", out.err), out.err
    done = re.search(r"extract\b.*?\b(\d+)/(\d+)\s+dogs\b", out.err)
    assert done and int(done.group(1)) == int(done.group(2)) == 60, out.err  # every dog
    assert "simulated 60 dogs" in out.err  # the demo's own lines go to stderr with --json


def test_options_reach_the_command_as_before(monkeypatch):
    """argparse's spellings still parse to the same values: several values after one flag, flags, typed choices."""
    import flows.commands.model as model_cmd
    import flows.commands.nightly as nightly_cmd
    import flows.commands.train as train_cmd

    seen = {}
    for mod in (train_cmd, nightly_cmd, model_cmd):
        monkeypatch.setattr(mod, "run", lambda args, name=mod.__name__: seen.setdefault(name, vars(args)) and 0)
    assert main(["train", "--market", "--source", "a.csv", "b.csv", "--seeds", "2", "--json"]) == 0
    t = seen["flows.commands.train"]
    assert (t["source"], t["market"], t["seeds"], t["json"], t["promote"], t["epochs"]) == (
        ["a.csv", "b.csv"], True, 2, True, False, None)
    assert main(["nightly", "--source", "a", "b", "--date", "2026-01-01", "--device", "cuda:1",
                 "--cohort-rule", "relative-s-quartile"]) == 0
    n = seen["flows.commands.nightly"]
    assert (n["source"], n["night"], n["device"], n["cohort_rule"]) == (["a", "b"], "2026-01-01", "cuda:1",
                                                                        "relative-s-quartile")
    assert type(n["cohort_rule"]) is str
    assert main(["model", "register", "--factory", "x:y", "--weights", "a.pt", "b.pt", "--current"]) == 0
    m = seen["flows.commands.model"]
    assert (m["model_command"], m["weights"], m["script"], m["current"]) == ("register", ["a.pt", "b.pt"], None, True)


def test_demo_on_a_bucket_keeps_the_url_and_writes_no_local_s3_folder(tmp_path, monkeypatch):
    from flows.commands.demo import demo_paths

    monkeypatch.chdir(tmp_path)
    home, source = demo_paths("s3://bucket/home", "synth.parquet")
    assert home == "s3://bucket/home"
    assert not str(source).startswith(str(tmp_path)) and "s3:" not in source.parts
    local, src = demo_paths("store", "synth.parquet")
    assert local == str(tmp_path / "store") and src == tmp_path / "store" / "demo" / "synth.parquet"
    assert not (tmp_path / "s3:").exists()
