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


def test_email_summary_leads_with_page_one_and_names_typical_and_watchlist_dogs(tmp_path):
    import json

    import pandas as pd

    from reports.email import email_summary
    from reports.headline import page_one, verdict_text
    from tests.report_fixtures import write_run

    run = write_run(tmp_path / "run", n_dogs=60, max_steps=80, scenario="none")
    headline = json.loads((run / "eval" / "headline.json").read_text(encoding="utf-8"))
    dogs = pd.read_parquet(run / "stats" / "dog.parquet")
    dogs = dogs[dogs["cohort_layer"]]
    lines = email_summary(headline, dogs, ("dog 000005",))
    assert list(lines)[:3] == ["Verdict", "Evaluated", "Scope"]  # the verdict leads, worded as on the page
    assert lines["Verdict"] == verdict_text(headline)
    assert lines["Verdict"].startswith("No robust association between information saturation")
    for f in page_one(headline):
        assert lines[f.label] == f.text
    assert lines["Typical settled dog"] == EVIL and lines["Typical settling dog"] == "DOG 000001"  # the page's rule
    assert lines["Watchlist: DOG 000005"].split(",")[0] in ("settled", "settling", "undecided")
    assert not [k for k in lines if "log-loss" in k.lower()]  # race NLL, never a per-runner log-loss under its name
    html = compose_report_email(night="n", url="http://x/", headline=lines, sender="s@x", recipients=["a@x"]) \
        .get_body(("html",)).get_content()
    assert EVIL not in html and "&lt;script&gt;" in html
    # a dog table without the exemplar columns: the headline's exemplars are named
    few = dogs[["dog_id", "dog_name", "cohort", "plateau_step"]]
    assert email_summary(headline, few)["Typical settled dog"] == EVIL
