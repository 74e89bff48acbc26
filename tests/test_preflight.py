"""The preflight: bad settings, nights, ids and destinations fail first, before any work, naming the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flows.cli import main as cli
from flows.preflight import check_cohort_rule, check_night, preflight_nightly
from flows.settings import Settings, load_settings
from gruviz_core.errors import ConfigError, GruvizError


def _store(home: Path) -> Path:
    """Just enough store for the preflight: a snapshot and a current model set."""
    (home / "forms" / "snap1").mkdir(parents=True)
    (home / "forms" / "LATEST").write_text("snap1\n")
    (home / "models" / "set1").mkdir(parents=True)
    (home / "models" / "set1" / "manifest.json").write_text("{}")
    (home / "models" / "CURRENT").write_text("set1\n")
    return home


@pytest.fixture
def env(monkeypatch):
    for k in ("GRUVIZ_SMTP_HOST", "GRUVIZ_RECIPIENTS", "GRUVIZ_SETTINGS_FILE", "GRUVIZ_REPORTS_DIR",
              "GRUVIZ_DEVICE", "GRUVIZ_SMTP_TLS", "GRUVIZ_COHORT_RULE", "GRUVIZ_COHORT_TAU"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


@pytest.mark.parametrize("night", ["../../escaped", "2026-13-01", "2026-11-25/..", "20261125", "", "0001-1-1"])
def test_night_must_be_a_date(night):
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        check_night(night)


def test_night_is_normalised_and_defaults_to_today():
    assert check_night("2026-11-25") == "2026-11-25"
    assert len(check_night(None, timezone="Australia/Sydney")) == 10


def test_cli_escaping_date_writes_nothing(tmp_path, env, capsys):
    home = _store(tmp_path / "store")
    assert cli(["nightly", "--home", str(home), "--date", "../../escaped"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err
    assert not (home / "runs").exists() and not list(tmp_path.glob("escaped*"))


@pytest.mark.parametrize("current, flag", [("../other/models/x", None), ("set1", "../../x"), ("/etc", None)])
def test_model_set_ids_stay_under_the_store(tmp_path, env, current, flag):
    home = _store(tmp_path / "store")
    (home / "models" / "CURRENT").write_text(current + "\n")
    with pytest.raises(ConfigError, match="plain id"):
        preflight_nightly(load_settings(home=str(home)), night="2026-11-25", model_set=flag)


def test_bogus_smtp_tls_fails_before_the_night(tmp_path, env, capsys):
    home = _store(tmp_path / "store")
    env.setenv("GRUVIZ_SMTP_TLS", "bogus")
    assert cli(["nightly", "--home", str(home), "--date", "2026-11-25"]) == 2
    err = capsys.readouterr().err
    assert "GRUVIZ_SMTP_TLS='bogus'" in err and "starttls" in err
    assert not (home / "runs").exists()


def test_missing_settings_file_is_named(tmp_path, env):
    env.setenv("GRUVIZ_SETTINGS_FILE", str(tmp_path / "nope.env"))
    with pytest.raises(ConfigError, match="nope.env"):
        load_settings()


def test_settings_file_is_read(tmp_path, env):
    f = tmp_path / "gruviz.env"
    f.write_text("GRUVIZ_KEEP_NIGHTS=7\n")
    env.setenv("GRUVIZ_SETTINGS_FILE", str(f))
    assert load_settings().keep_nights == 7


def test_unwritable_reports_dir_fails_first(tmp_path, env):
    home = _store(tmp_path / "store")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    env.setenv("GRUVIZ_REPORTS_DIR", str(blocker / "reports"))  # under a file: unwritable even for root
    with pytest.raises(ConfigError, match="reports directory .* not writable"):
        preflight_nightly(load_settings(home=str(home)), night="2026-11-25")


@pytest.mark.parametrize("name, value, match", [
    ("GRUVIZ_DEVICE", "gpu", "GRUVIZ_DEVICE"),
    ("GRUVIZ_COHORT_TAU", "0.5", "GRUVIZ_COHORT_TAU"),
    ("GRUVIZ_COHORT_THETA", "1.5", "GRUVIZ_COHORT_THETA"),
    ("GRUVIZ_SMTP_PORT", "0", "GRUVIZ_SMTP_PORT"),
    ("GRUVIZ_KEEP_NIGHTS", "-1", "GRUVIZ_KEEP_NIGHTS"),
    ("GRUVIZ_REPORTS_BASE_URL", "javascript:alert(1)//", "GRUVIZ_REPORTS_BASE_URL.*http"),  # into the email's link
    ("GRUVIZ_REPORTS_BASE_URL", "reports.example.com/gruviz", "GRUVIZ_REPORTS_BASE_URL.*http"),
    ("GRUVIZ_REPORTS_BASE_URL", "http://", "GRUVIZ_REPORTS_BASE_URL.*http"),
])
def test_typed_settings(env, name, value, match):
    env.setenv(name, value)
    with pytest.raises(ConfigError, match=match):
        load_settings()


def test_https_base_url_is_accepted(env):
    env.setenv("GRUVIZ_REPORTS_BASE_URL", "https://reports.example.com/gruviz")
    assert load_settings().reports_base_url == "https://reports.example.com/gruviz"


def test_cuda_without_cuda_is_refused(tmp_path, env):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA"):
        preflight_nightly(load_settings(home=str(_store(tmp_path)), device="cuda"), night="2026-11-25")


def test_unknown_cohort_rule_is_refused():
    with pytest.raises(ConfigError, match="no-such-rule"):
        check_cohort_rule(Settings(cohort_rule="no-such-rule"))
    assert check_cohort_rule(Settings(cohort_tau=0.99)).tau == pytest.approx(0.99)


@pytest.mark.parametrize("values, match", [
    ({"recipients": ["a@b.c"]}, "GRUVIZ_SMTP_HOST"),
    ({"smtp_host": "mail", "smtp_tls": "ssl", "smtp_port": 587}, "starttls"),
    ({"smtp_host": "mail", "recipients": ["not-an-address"]}, "not-an-address"),
    ({"smtp_host": "mail", "smtp_user": "me"}, "GRUVIZ_SMTP_PASSWORD"),
])
def test_smtp_settings_must_agree(tmp_path, env, values, match):
    s = Settings(home=_store(tmp_path), **values)
    with pytest.raises(ConfigError, match=match):
        preflight_nightly(s, night="2026-11-25")


def test_deployment_night_parameter_is_checked_by_the_flow(tmp_path, env, prefect_harness):
    from flows.nightly import nightly

    home = _store(tmp_path / "store")
    state = nightly(night="../../escaped", home=str(home), return_state=True)
    assert state.is_failed() and "YYYY-MM-DD" in state.message
    assert not (home / "runs").exists() and not list(tmp_path.glob("escaped*"))


@pytest.mark.parametrize("night", ["2052-02-06", "1999-12-31", "1970-01-01"])
def test_night_far_from_today_is_refused(night):
    # a mistyped year would become runs/LATEST for good (it only moves forward) and retention would
    # then delete real nights while keeping it
    with pytest.raises(ConfigError, match=f"night {night}.*today"):
        check_night(night, timezone="Australia/Sydney")


def test_night_up_to_two_days_ahead_is_accepted():
    import datetime as dt
    from zoneinfo import ZoneInfo

    today = dt.datetime.now(ZoneInfo("Australia/Sydney")).date()
    for days in (-400, 0, 1, 2):
        night = (today + dt.timedelta(days=days)).isoformat()
        assert check_night(night, timezone="Australia/Sydney") == night


def _drop_dir(tmp_path: Path) -> tuple[Path, Path, int]:
    """A store whose latest snapshot was ingested from a drop directory of a.csv and b.csv; b.csv's runs."""
    from flows.stages.ingest import ingest
    from gruviz_core.synth import simulate

    home = _store(tmp_path / "store")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    runs = simulate(30, seed=4)
    half = runs["race_id"].isin(runs["race_id"].unique()[::2])
    runs[half].to_csv(incoming / "a.csv", index=False)
    runs[~half].to_csv(incoming / "b.csv", index=False)
    ingest([str(incoming)], home)
    return home, incoming, int((~half).sum())


def test_a_file_gone_from_the_sources_is_refused_naming_it(tmp_path, env):
    from gruviz_core.errors import InputError

    home, incoming, b_runs = _drop_dir(tmp_path)
    (incoming / "b.csv").rename(tmp_path / "b.csv")  # archived out of the drop directory
    s = load_settings(home=str(home))
    with pytest.raises(InputError, match=rf"b\.csv.*{b_runs:,} runs fewer.*GRUVIZ_SOURCES_GONE_OK"):
        preflight_nightly(s, night="2026-11-25", sources=[str(incoming)])
    with pytest.raises(InputError, match=r"b\.csv"):  # a glob over the same directory holds it too
        preflight_nightly(s, night="2026-11-25", sources=[str(incoming / "*.csv")])


def test_a_file_gone_from_the_sources_is_accepted_when_acknowledged(tmp_path, env):
    home, incoming, b_runs = _drop_dir(tmp_path)
    (incoming / "b.csv").unlink()
    env.setenv("GRUVIZ_SOURCES_GONE_OK", '["b.csv"]')
    checked = preflight_nightly(load_settings(home=str(home)), night="2026-11-25", sources=[str(incoming)])
    assert checked.sources_gone == (f"b.csv is gone: {b_runs:,} runs fewer than last night",)


def test_cli_nightly_refuses_a_file_gone_from_the_sources(tmp_path, env, capsys):
    home, incoming, _ = _drop_dir(tmp_path)
    (incoming / "b.csv").unlink()
    env.setenv("GRUVIZ_SOURCES", f'["{incoming}"]')
    assert cli(["nightly", "--home", str(home), "--date", "2026-11-25"]) == 2
    err = capsys.readouterr().err
    assert "b.csv" in err and "GRUVIZ_SOURCES_GONE_OK" in err and "Traceback" not in err
    assert not (home / "runs").exists()


def test_files_of_other_sources_are_not_gone(tmp_path, env):
    home, incoming, _ = _drop_dir(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (incoming / "a.csv").rename(other / "a.csv")
    checked = preflight_nightly(load_settings(home=str(home)), night="2026-11-25", sources=[str(other / "a.csv")])
    assert checked.sources_gone == ()


@pytest.mark.parametrize("name, closest", [("GRUVIZ_RECIPIENT", "GRUVIZ_RECIPIENTS"),
                                           ("GRUVIZ_SMTP_HOSTT", "GRUVIZ_SMTP_HOST")])
def test_unknown_setting_is_refused_naming_the_closest(env, capsys, tmp_path, name, closest):
    env.setenv(name, "x")  # dropped silently, the night ended Completed with no email
    with pytest.raises(ConfigError, match=f"{name} is not a gruviz setting.*did you mean {closest}"):
        load_settings()
    env.delenv(name)
    f = tmp_path / "gruviz.env"
    f.write_text(f"GRUVIZ_KEEP_NIGHTS=7\n{name}=x\n")
    env.setenv("GRUVIZ_SETTINGS_FILE", str(f))
    with pytest.raises(ConfigError, match=f"gruviz.env, line 2: {name} is not a gruviz setting.*{closest}"):
        load_settings()


@pytest.mark.parametrize("content, match", [
    (b"GRUVIZ_KEEP_NIGHTS=7\nGRUVIZ_SMTP_HOST='mail.example.com\nGRUVIZ_SEEDS=2\n", r"line 2: .*quote"),
    (b"GRUVIZ_KEEP_NIGHTS=7\n\nGRUVIZ_EMAIL_FROM=gr\xffviz@example.com\n", r"line 3: .*not UTF-8 text"),
])
def test_unreadable_settings_file_names_the_line(env, tmp_path, content, match):
    f = tmp_path / "gruviz.env"
    f.write_bytes(content)
    env.setenv("GRUVIZ_SETTINGS_FILE", str(f))
    with pytest.raises(ConfigError, match="gruviz.env, " + match):
        load_settings()


@pytest.mark.parametrize("name, value", [("GRUVIZ_RECIPIENTS", "ops@example.com"), ("GRUVIZ_SOURCES", "drop-dir"),
                                         ("GRUVIZ_WATCHLIST", "[unclosed")])
def test_list_setting_that_is_not_json_is_one_line(env, capsys, tmp_path, name, value):
    env.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name}='{re.escape(value)}': expected a JSON list"):
        load_settings()
    assert cli(["nightly", "--home", str(tmp_path), "--date", "2026-11-25"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and name in err and "Traceback" not in err


def test_missing_source_directory_fails_first(tmp_path, env):
    home = _store(tmp_path / "store")
    with pytest.raises(GruvizError, match=r"incoming: no such file or directory"):
        preflight_nightly(load_settings(home=str(home)), night="2026-11-25", sources=[str(tmp_path / "incoming")])


@pytest.mark.parametrize("address, match", [("notanaddress", "not a scheduler address"),
                                            ("tcp://127.0.0.1:{port}", "cannot be reached")])
def test_dask_address_is_checked_first(tmp_path, env, address, match):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    env.setenv("GRUVIZ_TASK_RUNNER", "dask")
    env.setenv("GRUVIZ_DASK_ADDRESS", address.format(port=port))
    with pytest.raises(ConfigError, match=f"GRUVIZ_DASK_ADDRESS.*{match}"):
        preflight_nightly(load_settings(home=str(_store(tmp_path / "store"))), night="2026-11-25")


@pytest.mark.parametrize("key, value", [("factory", "gone_team_module:build"),
                                        ("feature_spec", {"feature_names": ["won"], "context_names": [],
                                                          "callable": "gone_team_module:features"})])
def test_registered_model_whose_module_is_gone_fails_first(tmp_path, env, key, value):
    import json

    home = _store(tmp_path / "store")
    (home / "models" / "set1" / "manifest.json").write_text(json.dumps({"kind": "byo", key: value}))
    with pytest.raises(ConfigError, match="model set set1.*gone_team_module"):
        preflight_nightly(load_settings(home=str(home)), night="2026-11-25")
