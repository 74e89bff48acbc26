"""The nightly email: headline numbers and the report's link, as HTML with a plain-text part.

Composing is pure (`compose_report_email`, `compose_failure_email`); `send_email` talks SMTP.
Every value from data is escaped in the HTML part. The password is never logged or put in errors.
"""

from __future__ import annotations

import html
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from gruviz_core.errors import ConfigError, NotifyError
from gruviz_core.exemplars import typical_dogs
from reports.headline import headline_lines, record

__all__ = [
    "SmtpConfig", "email_summary", "compose_report_email", "compose_failure_email", "send_email", "report_url",
]

_TLS_MODES = ("none", "starttls", "ssl")


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to send."""

    host: str
    """SMTP server host name."""
    port: int
    """SMTP port (25/587 plain or STARTTLS, 465 implicit TLS)."""
    tls: str = "starttls"
    """none, starttls or ssl."""
    user: str | None = None
    """Login user; no login when None."""
    password: str | None = None
    """Login password; never logged."""
    sender: str = "gruviz@localhost"
    """From address."""
    timeout_s: float = 20.0
    """Socket timeout of one attempt."""

    def __post_init__(self) -> None:
        if self.tls not in _TLS_MODES:
            raise ConfigError(f"smtp_tls={self.tls!r}: expected one of {', '.join(_TLS_MODES)}")

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return f"SmtpConfig(host={self.host!r}, port={self.port}, tls={self.tls!r}, user={self.user!r}, password=***)"


def report_url(base_url: str, rel_path: str) -> str:
    """The public link of a published report: base URL + its path under the reports directory."""
    return base_url.rstrip("/") + "/" + rel_path.lstrip("/")


def email_summary(headline: Any, dogs=None, watchlist: tuple[str, ...] = ()) -> dict[str, str]:
    """The email's lines, led by the verdict and page one's findings (`reports.headline.headline_lines`, the same
    sentences as the page); then the typical dogs (`gruviz_core.exemplars`, the page's heatmap rule) and the
    watchlist dogs by name. `dogs` is stats/dog.parquet at the cohort layer (dog_id, dog_name, cohort,
    plateau_step; with n_steps and mean_s the typical dogs are picked from it, else the headline's exemplars are
    named). The flow's summary artifact shows these same lines."""
    out = headline_lines(headline)
    if dogs is None or not len(dogs):
        return out
    if {"n_steps", "mean_s", "dog_index"} <= set(dogs.columns):
        for _, r in typical_dogs(dogs).iterrows():
            out[f"Typical {r['cohort']} dog"] = str(r["dog_name"])
    else:
        by_id = dogs.drop_duplicates("dog_id").set_index("dog_id")
        for pair in record(headline).get("exemplars") or []:
            for key in ("dog_a", "dog_b"):
                if isinstance(pair, dict) and pair.get(key) in by_id.index:
                    row = by_id.loc[pair[key]]
                    out[f"Typical {row['cohort']} dog"] = str(row["dog_name"])
            break
    for w in watchlist:
        hit = dogs[(dogs["dog_id"] == w) | (dogs["dog_name"].str.casefold() == str(w).casefold())]
        if len(hit):
            row = hit.iloc[0]
            t = row.get("plateau_step")
            plateau = f", plateau at race {int(t)}" if t == t and t is not None else ""
            out[f"Watchlist: {row['dog_name']}"] = f"{row['cohort']}{plateau}"
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def compose_report_email(
    *, night: str, url: str, headline: dict, sender: str, recipients: list[str]
) -> EmailMessage:
    """The nightly message: subject, plain text and HTML with the headline numbers and the link."""
    rows = [(str(k), _fmt(v)) for k, v in headline.items() if not isinstance(v, (dict, list))]
    text = [f"gruviz nightly report for {night}", "", f"Report: {url}", ""]
    text += [f"  {k}: {v}" for k, v in rows]
    cells = "".join(
        f"<tr><td style='padding:2px 12px 2px 0;color:#555'>{html.escape(k)}</td>"
        f"<td style='padding:2px 0'><b>{html.escape(v)}</b></td></tr>"
        for k, v in rows
    )
    body = (
        "<html><body style='font-family:sans-serif'>"
        f"<h2>gruviz nightly report &mdash; {html.escape(night)}</h2>"
        f"<p><a href=\"{html.escape(url, quote=True)}\">Open the report</a></p>"
        f"<table>{cells}</table>"
        "</body></html>"
    )
    return _message(f"gruviz nightly {night}", "\n".join(text) + "\n", body, sender, recipients)


def compose_failure_email(
    *, flow_name: str, run_name: str, state: str, message: str, sender: str, recipients: list[str]
) -> EmailMessage:
    """A short notice that a run failed or crashed."""
    text = f"gruviz {flow_name} run {run_name} ended {state}.\n\n{message}\n"
    body = (
        "<html><body style='font-family:sans-serif'>"
        f"<h2>gruviz {html.escape(flow_name)} run {html.escape(run_name)} ended {html.escape(state)}</h2>"
        f"<pre>{html.escape(message)}</pre></body></html>"
    )
    return _message(f"gruviz {flow_name} {state}: {run_name}", text, body, sender, recipients)


def _message(subject: str, text: str, body: str, sender: str, recipients: list[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject.replace("\n", " ")
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="gruviz")
    msg.set_content(text)
    msg.add_alternative(body, subtype="html")
    return msg


def send_email(msg: EmailMessage, cfg: SmtpConfig) -> None:
    """Send one message; raises NotifyError naming the server (never the password)."""
    try:
        if cfg.tls == "ssl":
            client = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s, context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
        with client:
            if cfg.tls == "starttls":
                client.starttls(context=ssl.create_default_context())
            if cfg.user:
                client.login(cfg.user, cfg.password or "")
            client.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        raise NotifyError(
            f"email to {msg['To']} via {cfg.host}:{cfg.port} ({cfg.tls}) failed: {type(exc).__name__}: {exc}"
        ) from None
