"""The report email against a real SMTP server on loopback."""

from __future__ import annotations

import pytest

from gruviz_core.errors import ConfigError, NotifyError
from reports.email import SmtpConfig, compose_failure_email, compose_report_email, report_url, send_email
from tests.smtp_server import SmtpServer, free_port

EVIL = "<script>alert(1)</script>"


def _msg(url="http://reports.example/2026-11-26/index.html"):
    return compose_report_email(
        night="2026-11-26", url=url,
        headline={"dogs": 1200, "model_log_loss": 0.3456789, "watch": EVIL},
        sender="gruviz@localhost", recipients=["a@example.com", "b@example.com"],
    )


def test_report_url_joins_base_and_path():
    assert report_url("http://h:8765/", "/2026-11-26/index.html") == "http://h:8765/2026-11-26/index.html"


def test_email_has_plain_and_html_parts_with_link_and_escaped_data():
    msg = _msg()
    plain = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "http://reports.example/2026-11-26/index.html" in plain
    assert 'href="http://reports.example/2026-11-26/index.html"' in html
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "0.3457" in plain


def test_send_reaches_a_real_smtp_server():
    with SmtpServer() as server:
        send_email(_msg(), SmtpConfig(host="127.0.0.1", port=server.port, tls="none"))
    (rcpts, received), = server.messages
    assert rcpts == ["a@example.com", "b@example.com"]
    assert received["Subject"] == "gruviz nightly 2026-11-26"
    assert "http://reports.example/2026-11-26/index.html" in received.get_body(("plain",)).get_content()


def test_send_to_a_dead_server_names_it_and_hides_the_password():
    cfg = SmtpConfig(host="127.0.0.1", port=free_port(), tls="none", user="u", password="hunter2-secret", timeout_s=2)
    with pytest.raises(NotifyError) as err:
        send_email(_msg(), cfg)
    assert "127.0.0.1" in str(err.value)
    assert "hunter2-secret" not in str(err.value) and "hunter2-secret" not in repr(cfg)


def test_failure_notice_escapes_the_message():
    msg = compose_failure_email(flow_name="nightly", run_name="brave-dog", state="Failed",
                                message=f"bad row {EVIL}", sender="g@x", recipients=["a@x"])
    assert EVIL not in msg.get_body(("html",)).get_content()
    assert "Failed" in msg["Subject"]


def test_unknown_tls_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="smtp_tls"):
        SmtpConfig(host="h", port=25, tls="maybe")


def test_email_summary_labels_numbers_and_names_watchlist_dogs():
    import pandas as pd

    from reports.email import email_summary
    from reports.headline import verdict_text

    main = {"metric": "gap_vs_market", "a": "saturated", "b": "unsaturated", "diff": 0.01, "lo": -0.002, "hi": 0.02,
            "n_dogs_a": 150, "n_dogs_b": 900, "n_winners_a": 60, "n_winners_b": 300, "comparable": True,
            "excludes_zero": False}
    headline = {"dogs": 1200, "obs": 30000, "cohort_counts": {"saturated": 10, "unsaturated": 20},
                "race_nll": {"model": 1.71234, "market": 1.7, "uniform": 2.05}, "main_effect": main,
                "n_comparisons": 5, "plateau_median_km": None,
                "period": {"start": "2026-06-01", "end": "2026-11-24", "model_cutoff": "2026-05-31", "races": 5400,
                           "dogs": 3100, "rows": 40000, "in_sample": False, "min_races": 2000, "too_small": False},
                "exemplars": [{"dog_a": "d1", "dog_b": "d2"}]}
    dogs = pd.DataFrame({"dog_id": ["d1", "d2"], "dog_name": [EVIL, "Quiet Bob"],
                         "cohort": ["saturated", "unsaturated"], "plateau_step": [12.0, float("nan")]})
    lines = email_summary(headline, dogs, ("quiet bob",))
    assert lines["Dogs / race steps"] == "1,200 / 30,000"
    assert lines["Cohorts"] == "saturated 10, unsaturated 20"
    assert lines["Race NLL, model"] == "1.712" and lines["Race NLL, uniform"] == "2.05"
    assert list(lines)[0] == "Verdict"  # the verdict leads, worded by reports.headline.verdict_text as on the page
    assert lines["Verdict"] == verdict_text(headline)
    assert "No association detected at this size" in lines["Verdict"] and "5 comparisons" in lines["Verdict"]
    assert "It matters" not in lines["Verdict"] and "not reached" in lines["Verdict"]
    assert lines["Evaluated"].startswith("Evaluated out of sample: races from 2026-06-01 to 2026-11-24")
    assert lines["Most saturated exemplar"] == EVIL and lines["Least saturated exemplar"] == "Quiet Bob"
    assert lines["Watchlist: Quiet Bob"] == "unsaturated"
    assert not [k for k in lines if "log-loss" in k.lower()]  # race NLL, never a per-runner log-loss under its name
    html = compose_report_email(night="n", url="http://x/", headline=lines, sender="s@x", recipients=["a@x"]) \
        .get_body(("html",)).get_content()
    assert EVIL not in html and "&lt;script&gt;" in html
