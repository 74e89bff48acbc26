"""The one settings object: GRUVIZ_ environment variables, optionally a TOML/env file.

Read at the entry points (CLI, flows); library code takes plain arguments.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from gruviz_core.errors import ConfigError
from gruviz_core.stats import TAUS

__all__ = ["Settings", "load_settings"]
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
BLOCK_BYTES_FIXED, BLOCK_BYTES_PER_DOG = 2**30, 64 * 1024
"""Memory of one extraction block in flight: a fixed part (batch tensors, two shard sets, the loaded inputs)
and a part per dog; measured order of magnitude (bench/cluster.py: ~1.4 GB for a 5,000-dog block)."""
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")


class Settings(BaseSettings):
    """Everything a deployment of gruviz can set."""

    model_config = SettingsConfigDict(env_prefix="GRUVIZ_", env_file=None, extra="ignore")

    home: str = Field("./gruviz-data", description="Store root: snapshots, model registry, runs. A local directory "
                      "(made absolute) or an fsspec URL such as s3://bucket/prefix (see docs/cluster.md).")
    reports_dir: Path | None = Field(None, description="Where HTML reports are published (a local directory); default "
                                     "<home>/reports, or ./gruviz-reports when home is a URL.")
    reports_base_url: str = Field(
        "http://127.0.0.1:8765", description="Base URL under which reports_dir is served; the email links to it."
    )
    device: str = Field("auto", description="Torch device for extraction: auto (cuda, else mps, else cpu), cpu, "
                        "cuda, cuda:N or mps.")
    torch_threads: int = Field(
        1, description="Torch intra-op threads per process on CPU. 1 by default: on a shared machine two OpenMP threads "
        "spin-wait on each other (measured 150x slower under load); blocks run in parallel instead.", gt=0)
    batch_size: int = Field(4096, description="Dogs per extraction batch.", gt=0)
    block_dogs: int = Field(16384, description="Dogs per extraction block (a unit of work owning whole shards).", gt=0)
    seeds: int = Field(3, description="Seeds K trained per model set.", gt=0)
    hidden_size: int = Field(64, description="GRU units per layer of the built-in model.", gt=0)
    num_layers: int = Field(1, description="GRU layers of the built-in model.", gt=0)
    market_context: bool = Field(
        False, description="Train with the market price as pre-race context; off by default so the GRU learns from form and the market stays the baseline.")
    train_workers: int = Field(1, description="Seeds trained in parallel processes (one torch thread each).", gt=0)
    cohort_rule: str = Field("plateau-s", description="Named cohort rule (gruviz_core.cohorts.RULES); an unknown name is refused.")
    cohort_theta: float | None = Field(
        None, ge=0.0, le=1.0,
        description="Cohort rule: tail F_tau (share of units) at or above which a dog with a plateau is saturated; default the rule's.")
    cohort_tau: float | None = Field(None, description="Cohort rule: |h| threshold of F_tau (0.9, 0.95 or 0.99); default the rule's.")
    bootstrap: int = Field(1000, description="Bootstrap replicates (over dogs) of every comparison's interval.", ge=100)
    min_eval_races: int = Field(
        2000, description="Fewest held-out races (after the model set's training and early-stopping windows) to compare on.", ge=1)
    probe_dogs: int = Field(
        800, ge=0, description="Dogs sampled for the probe atlas (what the state knows; all their races): 800 dogs "
        "cost about 1.8 s for 3 seeds of 64 units on one core on a 500k-row run (a fifth of evaluate); 0 probes every dog.")
    drift_psi: float = Field(
        0.25, gt=0.0, description="Input drift: a model input whose population stability index (tonight's new rows "
        "against the model set's training window) exceeds this is flagged in the report and the email (< 0.1 stable, "
        "0.1-0.25 some shift, > 0.25 shifted).")
    drift_share: float = Field(
        0.05, gt=0.0, lt=1.0, description="Input drift: a rise in an input's missing, clipped, unknown-track or "
        "unseen-level share by more than this (and by more than 4 standard errors) is flagged.")
    model_change_dogs: int = Field(
        3000, ge=1, description="On the night a new model set takes over, the previous set scores whole held-out "
        "races of tonight's run until about this many dogs (their whole histories re-run on the previous set; its "
        "states are not stored): the same-race comparison of the two sets in the report and the email.")
    determinism_dogs: int = Field(
        50, ge=0, description="Determinism watch: the watchlist's dogs, else this many dogs of a fixed hashed sample, "
        "whose history did not change since last night under the same model set must have identical stored states; "
        "a difference is flagged with its first differing step (0 turns the watch off).")
    sources: list[str] = Field(default_factory=list, description="Form data the nightly ingests when no source is "
        "passed: directories or globs where new form files land, as a JSON list (unchanged files are not re-read).")
    sources_gone_ok: list[str] = Field(default_factory=list, description="Files that may leave the sources since "
        "the last snapshot (archived, rotated), as a JSON list of file names or globs (e.g. [\"b.csv\"], or [\"*\"] "
        "where files are rotated away by design); any other file gone is refused, naming it, since the night's "
        "data would silently shrink. Acknowledged ones are named in the log, the report and the email.")
    max_inflated_mb: int = Field(
        1024, gt=0, description="MiB one compressed source file (.csv.gz) may inflate to; past it the file is "
        "refused as a possible decompression bomb (it is read step by step, never beyond this).")
    max_inflate_ratio: float = Field(
        100.0, gt=1, description="Times its compressed size a source file may inflate (judged past 16 MiB; form "
        "data compresses 3-15 times); past it the file is refused as a possible decompression bomb.")
    timezone: str = Field("Australia/Sydney", description="Timezone of the nightly schedule and of report dates.")
    watchlist: list[str] = Field(default_factory=list, description="Dog ids or names shown in the report's heatmaps.")
    smtp_host: str | None = Field(None, description="SMTP server; no email is sent when unset.")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port.")
    smtp_tls: Literal["none", "starttls", "ssl"] = Field("starttls", description="none, starttls or ssl.")
    smtp_user: str | None = Field(None, description="SMTP user name.")
    smtp_password: SecretStr | None = Field(None, description="SMTP password (or name a Prefect Secret in smtp_password_secret).")
    smtp_password_secret: str | None = Field(None, description="Name of a Prefect Secret block holding the SMTP password.")
    email_from: str = Field("gruviz@localhost", description="From address of report emails.")
    recipients: list[str] = Field(default_factory=list, description="Who gets the nightly email.")
    keep_nights: int = Field(
        30, ge=0, description="Published runs and report pages kept, in nights (newest first); 0 keeps every night.")
    task_runner: Literal["threads", "processes", "dask"] = Field(
        "threads", description="Where extraction blocks run: threads (of the flow's process), processes (a local "
        "pool of worker processes, Prefect's ProcessPoolTaskRunner) or dask (prefect-dask's DaskTaskRunner on "
        "dask_address, else a local cluster of dask_workers worker processes; needs gruviz[dask]).")
    dask_address: str | None = Field(
        None, description="Scheduler of an existing Dask cluster, e.g. tcp://scheduler:8786 (task_runner=dask); "
        "unset: a local cluster of worker processes for the night.")
    dask_workers: int | None = Field(
        None, gt=0, description="Worker processes of the local Dask cluster (one thread each); default the cores.")
    max_blocks_in_flight: int | None = Field(
        None, gt=0, description="Extraction blocks submitted at once, on any runner: peak memory is about this "
        "times one block's. Default min(cores, 0.5 x available memory / (1 GiB + block_dogs x 64 KiB)), at "
        "least 1: a block holds about 1 GiB whatever its size (batch tensors, two shard sets in flight, the "
        "loaded inputs in its process) plus about 64 KiB per dog, and half the memory is left to the flow's "
        "own stages (measured: bench/cluster.py, docs/cluster.md).")
    block_timeout_s: float = Field(
        3 * 3600.0, gt=0, description="Seconds one extraction block may run before it fails (and is retried once). "
        "A block whose task has not ended after both attempts and a grace (stuck in a blocking call, which a "
        "task timeout in a worker thread cannot interrupt) fails the night from the flow (flows.blocks.block_backstop_s).")
    evaluate_timeout_s: float = Field(2 * 3600.0, gt=0, description="Seconds the evaluate task may run.")
    email_timeout_s: float = Field(300.0, gt=0, description="Seconds one attempt at sending the nightly email may take.")
    nightly_timeout_s: float = Field(
        10 * 3600.0, gt=0, description="Seconds the whole nightly may run: past it the night ends Failed, the "
        "failure notice goes out and the nightly lock is released, so the next night runs.")

    @field_validator("home", mode="before")
    @classmethod
    def _home(cls, v) -> str:
        text = str(v).strip()
        if not text:
            raise ValueError("expected a directory or a URL such as s3://bucket/prefix")
        if _is_url(text):
            return text.rstrip("/") if not text.startswith("file://") else str(Path(text[len("file://"):]).absolute())
        return str(Path(text).expanduser().absolute())

    @field_validator("reports_base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        text = str(v).strip()
        parts = urlsplit(text)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname or any(c.isspace() for c in text):
            raise ValueError("expected an http(s) URL with a host, e.g. https://reports.example.com/gruviz "
                             "(it is the report link in the email)")
        return text

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE.match(v):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return v

    @field_validator("cohort_tau")
    @classmethod
    def _tau(cls, v: float | None) -> float | None:
        if v is not None and not any(abs(v - t) < 1e-9 for t in TAUS):
            raise ValueError(f"expected one of the stored thresholds {TAUS}")
        return v

    @property
    def home_is_url(self) -> bool:
        """True when the store is on an fsspec URL (object storage), not a local directory."""
        return _is_url(self.home)

    @property
    def blocks_in_flight(self) -> int:
        """max_blocks_in_flight, or its default from the cores, the available memory and block_dogs."""
        if self.max_blocks_in_flight is not None:
            return self.max_blocks_in_flight
        import psutil

        per_block = BLOCK_BYTES_FIXED + self.block_dogs * BLOCK_BYTES_PER_DOG
        by_memory = int(0.5 * psutil.virtual_memory().available // per_block)
        return max(1, min(os.cpu_count() or 1, by_memory))

    @property
    def inflate_limit(self) -> dict:
        """How far a compressed source may inflate, as gruviz_core.formats.reader.InflateLimit's fields."""
        return {"max_bytes": self.max_inflated_mb << 20, "max_ratio": self.max_inflate_ratio}

    @property
    def reports_path(self) -> Path:
        if self.reports_dir:
            return Path(self.reports_dir)
        return Path("./gruviz-reports").absolute() if self.home_is_url else Path(self.home) / "reports"


def _is_url(text: str) -> bool:
    return _URL.match(text) is not None


OTHER_VARIABLES = ("GRUVIZ_SETTINGS_FILE", "GRUVIZ_REPO")
"""GRUVIZ_ variables that are not settings: the settings file's path, the checkout a worker runs (prefect.yaml)."""


def load_settings(**overrides) -> Settings:
    """Settings from the environment (and the dotenv file named by GRUVIZ_SETTINGS_FILE, if any),
    with explicit overrides (CLI flags) on top. Raises ConfigError naming every bad setting, an unknown
    GRUVIZ_ variable (with the closest known name) and a settings file line that cannot be read."""
    env_file = os.environ.get("GRUVIZ_SETTINGS_FILE") or None
    if env_file is not None and not Path(env_file).is_file():
        raise ConfigError(f"GRUVIZ_SETTINGS_FILE={env_file}: no such file; create it or unset GRUVIZ_SETTINGS_FILE")
    _check_names((k, "environment") for k in os.environ)
    if env_file is not None:
        _check_names(_settings_file_keys(env_file))
    try:
        return Settings(_env_file=env_file, **{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, env_file)) from None
    except SettingsError as exc:  # a value pydantic-settings must decode as JSON first (a list) is not JSON
        raise ConfigError(_describe_undecodable(exc, env_file)) from None


def _known_names() -> set[str]:
    return {f"GRUVIZ_{name.upper()}" for name in Settings.model_fields} | set(OTHER_VARIABLES)


def _check_names(names) -> None:
    """ConfigError for the first GRUVIZ_ name (with where it was set) that is no setting: it would be dropped."""
    import difflib

    known = _known_names()
    for name, where in names:
        upper = name.upper()
        if upper.startswith("GRUVIZ_") and upper not in known:
            close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "the settings are listed in README.md"
            raise ConfigError(f"{where}: {name} is not a gruviz setting and would be ignored; {hint} Rename or unset it")


def _settings_file_keys(env_file: str) -> list[tuple[str, str]]:
    """(key, 'FILE, line N') of every assignment in the dotenv file; ConfigError naming the line that is not
    UTF-8 text or cannot be parsed (python-dotenv skips such a line with a warning, dropping the setting)."""
    from dotenv.parser import parse_stream

    data = Path(env_file).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{env_file}, line {line}: bytes that are not UTF-8 text ({data[exc.start:exc.end]!r}); "
                          "save the settings file as UTF-8") from None
    keys = []
    for binding in parse_stream(io.StringIO(text)):
        where = f"{env_file}, line {binding.original.line}"
        if binding.error:
            start = binding.original.string.strip().splitlines()[0][:60] if binding.original.string.strip() else ""
            raise ConfigError(f"{where}: cannot be read ({start!r}: an unterminated quote, or not KEY=VALUE); "
                              "fix the line (the setting would be dropped)")
        if binding.key:
            keys.append((binding.key, where))
    return keys


def _describe_undecodable(exc: SettingsError, env_file: str | None) -> str:
    """One line for a list setting whose value is not JSON, naming the variable, the value and the form."""
    match = re.search(r'field "([a-z_]+)"', str(exc))
    field = match.group(1) if match else None
    name = f"GRUVIZ_{field.upper()}" if field else "a GRUVIZ_ list setting"
    value = os.environ.get(name) if field else None
    if value is None and field and env_file:
        from dotenv import dotenv_values

        value = dotenv_values(env_file).get(name)
    given = f"{name}={value!r}" if value is not None else name
    return (f"{given}: expected a JSON list, e.g. {name}='[\"a\", \"b\"]' (quotes inside the brackets); "
            f"fix or unset it{f' (environment or {env_file})' if env_file else ''}")


def _describe(exc: ValidationError, env_file: str | None) -> str:
    """One line per bad setting: its variable, the value given and what is expected."""
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        value = err.get("input")
        lines.append(f"GRUVIZ_{field.upper()}={value!r}: {err['msg']}")
    where = f" (environment, flags or {env_file})" if env_file else " (environment or flags)"
    return "invalid settings" + where + ": " + "; ".join(lines) + "; fix or unset them"
