"""Email from the flows: the nightly report's link, and a short notice when a run fails or crashes."""

from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from flows.settings import Settings, load_settings
from reports.email import SmtpConfig, compose_failure_email, compose_report_email, send_email

__all__ = ["send_report_email", "notify_failure", "smtp_config"]

log = logging.getLogger(__name__)


def smtp_config(s: Settings) -> SmtpConfig | None:
    """SMTP settings, the password from settings or the named Prefect Secret; None when no host is set."""
    if not s.smtp_host:
        return None
    password = s.smtp_password.get_secret_value() if s.smtp_password else None
    if password is None and s.smtp_password_secret:
        from prefect.blocks.system import Secret

        password = Secret.load(s.smtp_password_secret).get()
    return SmtpConfig(host=s.smtp_host, port=s.smtp_port, tls=s.smtp_tls, user=s.smtp_user,
                      password=password, sender=s.email_from)


@task(name="notify", retries=2, retry_delay_seconds=3, cache_policy=NO_CACHE)
def send_report_email(night: str, url: str, headline: dict) -> str:
    """Send the nightly email to the configured recipients; returns who got it."""
    s = load_settings()
    cfg = smtp_config(s)
    if cfg is None or not s.recipients:
        get_run_logger().info("no SMTP host or recipients set; no email sent")
        return ""
    msg = compose_report_email(night=night, url=url, headline=headline, sender=cfg.sender, recipients=s.recipients)
    send_email(msg, cfg)
    get_run_logger().info("emailed the report link to %d recipient(s)", len(s.recipients))
    return msg["To"]


def notify_failure(flow, flow_run, state) -> None:
    """Flow hook (on_failure / on_crashed): a short notice to the recipients; never raises."""
    try:
        s = load_settings()
        cfg = smtp_config(s)
        if cfg is None or not s.recipients:
            return
        msg = compose_failure_email(
            flow_name=flow.name, run_name=flow_run.name, state=state.name,
            message=state.message or "", sender=cfg.sender, recipients=s.recipients,
        )
        send_email(msg, cfg)
    except Exception as exc:  # a hook must not mask the run's own failure
        log.error("failure notice not sent: %s", exc)
