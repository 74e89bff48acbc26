"""The explorer: any dog's hidden states, gates, abs-sum, plateau and predictions, as pages built on demand.

    /explore                               search (name or id prefix) over the latest published run
    /explore?run=<run_id>&q=<text>         ... over a chosen run
    /explore/<run_id>/dog/<dog_id>         a dog's page
    /explore/<run_id>/dog/<dog_id>?vs=<id> ... with a second dog beside it and the two-dog divergence

`ExplorerApp(source)` answers a request target with an `ExploreResponse`; `reports.serve` routes
`/explore...` to it. The source (`storage.explore.ExploreStore`, wired by `flows.commands.serve`) reads
the store; this module only derives (win probabilities, status before each race, divergence) and draws.
Every name goes through the one autoescaping Jinja environment (`reports.render.ENV`); the figures' data
travel as JSON in an inert <script type="application/json"> and are drawn by the page's own script with
the reports directory's offline plotly.js.
"""

from __future__ import annotations

import base64
import difflib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import numpy as np
from markupsafe import Markup
from plotly.colors import sequential

from gruviz_core.cohorts import CohortRule, status_at_prediction
from gruviz_core.errors import ConfigError, GruvizError, NotFoundError
from gruviz_core.explore import DogDirectory, DogRecord, RunInfo, race_win_prob, search_dogs
from gruviz_core.resilience import pair_divergence
from reports.model import COHORT_COLOURS
from reports.plot_base import label
from reports.render import ENV

__all__ = ["ExploreSource", "ExploreResponse", "ExplorerApp", "DogPage", "SearchPage", "ErrorPage", "dog_href",
           "PLOTLY_SRC"]

PLOTLY_SRC = "/assets/plotly.min.js"
"""The reports directory's offline plotly.js, as the server serves it (storage.site.ASSET)."""
_RUN_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,127}$")
_MAX_VALUE = 200
"""Longest query value or dog id accepted (longer is a malformed request)."""
_COLORSCALE = [[i / (len(sequential.RdBu_r) - 1), c] for i, c in enumerate(sequential.RdBu_r)]
"""The report's diverging scale (blue -1, white 0, red +1), for plotly.js."""
_PARAMS = {"search": {"run", "q"}, "dog": {"vs"}}


class ExploreSource(Protocol):
    """What the explorer reads (storage.explore.ExploreStore); NotFoundError for an unknown run or dog."""

    def runs(self) -> list[RunInfo]: ...

    def latest_run_id(self) -> str | None: ...

    def directory(self, run_id: str) -> DogDirectory: ...

    def dog(self, run_id: str, dog_id: str) -> DogRecord: ...


@dataclass(frozen=True)
class ExploreResponse:
    """An answer of the explorer: status and page."""

    status: int
    """HTTP status (200, 400, 404, 500)."""
    html: str
    """The page."""


@dataclass(frozen=True)
class DogLink:
    """A dog in a list of hits or suggestions."""

    name: str
    """Its name."""
    id: str
    """Its id."""
    href: str
    """Its page."""


@dataclass(frozen=True)
class SearchPage:
    """The search box over one run and the list of runs."""

    run_id: str
    """The run searched."""
    runs: tuple[RunInfo, ...]
    """Every published run, newest first."""
    query: str
    """What was typed."""
    hits: tuple[DogLink, ...]
    """Matching dogs (at most 25)."""
    n_dogs: int
    """Dogs in the run."""


@dataclass(frozen=True)
class RaceRow:
    """One race of the dog: the model's win probability per seed, the market's, the result, the status before."""

    step: int
    """1-based race number in the dog's history."""
    date: str
    """Race date, YYYY-MM-DD."""
    race_id: str
    """The race."""
    runners: int
    """Runners of the race in the store."""
    model: tuple[float | None, ...]
    """Win probability of each seed (softmax of the scores within the race)."""
    market: float | None
    """The market's implied win probability."""
    result: str
    """'won', 'lost' or 'unknown'."""
    status: str
    """Saturation status the model had before the race (gruviz_core.cohorts.status_at_prediction)."""


@dataclass(frozen=True)
class DogPage:
    """A dog's page (and the second dog's, when compared)."""

    run_id: str
    """The run."""
    name: str
    """The dog's name."""
    id: str
    """The dog's id."""
    cohort: str
    """Its cohort at the cohort layer ('unknown' without stats)."""
    plateau: int | None
    """Its plateau step (None: none seen)."""
    n_races: int
    """Races in its history."""
    seeds: tuple[int, ...]
    """The seeds of the run's models."""
    rule: str
    """The cohort rule, in words."""
    cohort_layer: int
    """The layer whose states decide cohorts."""
    races: tuple[RaceRow, ...]
    """One row per race, newest last."""
    vs: DogLink | None
    """The dog compared with, if any."""
    vs_cohort: str | None
    """Its cohort."""
    notes: tuple[str, ...]
    """What could not be shown (stats missing, ...)."""
    payload: str
    """The figures' data, JSON (drawn by the page's script)."""


@dataclass(frozen=True)
class ErrorPage:
    """A 400 or 404 (or 500) page."""

    status: int
    """HTTP status."""
    title: str
    """Heading."""
    message: str
    """What was wrong and what to do."""
    suggestions: tuple[DogLink, ...] = ()
    """The closest names, for an unknown dog."""


def dog_href(run_id: str, dog_id: str, vs: str | None = None) -> str:
    """The relative URL of a dog's page."""
    href = f"/explore/{quote(run_id, safe='')}/dog/{quote(dog_id, safe='')}"
    return href + (f"?vs={quote(vs, safe='')}" if vs else "")


class _BadRequest(Exception):
    pass


class ExplorerApp:
    """Answers explorer requests from a source; one instance serves every thread."""

    def __init__(self, source: ExploreSource, *, plotly_src: str = PLOTLY_SRC):
        self.source = source
        self.plotly_src = plotly_src

    def __call__(self, target: str) -> ExploreResponse:
        """The response to a request target ('/explore...?...')."""
        try:
            return self._route(target)
        except _BadRequest as e:
            return self._error(ErrorPage(400, "Bad request", str(e)))
        except NotFoundError as e:
            return self._error(ErrorPage(404, "Not found", _public(e)))
        except GruvizError as e:
            return self._error(ErrorPage(500, "The store could not be read", f"{type(e).__name__}: {_public(e)}"))
        except Exception as e:  # a page must answer, and say what failed, without the store's paths
            return self._error(ErrorPage(500, "The page could not be built", f"{type(e).__name__}: {_public(e)}"))

    # ------------------------------------------------------------------ routing

    def _route(self, target: str) -> ExploreResponse:
        parts = urlsplit(target)
        segs = parts.path.split("/")[1:]  # ['explore', ...]
        if segs and segs[-1] == "" and len(segs) <= 2:
            segs = segs[:-1]
        try:
            segs = [unquote(s, errors="strict") for s in segs]
        except UnicodeDecodeError:
            raise _BadRequest("the path is not valid UTF-8 once percent-decoded") from None
        if segs == ["explore"]:
            return self._search(_query(parts.query, _PARAMS["search"]))
        if len(segs) == 4 and segs[0] == "explore" and segs[2] == "dog":
            q = _query(parts.query, _PARAMS["dog"])
            return self._dog(_run_id(segs[1]), _value("dog id", segs[3]), q.get("vs"))
        raise NotFoundError("no such explorer page; try /explore")

    def _search(self, q: dict[str, str]) -> ExploreResponse:
        run_id = _run_id(q["run"]) if "run" in q else self.source.latest_run_id()
        runs = tuple(self.source.runs())
        if run_id is None:
            raise NotFoundError("no run is published yet; run gruviz nightly (or gruviz demo) first")
        directory = self.source.directory(run_id)
        text = q.get("q", "")
        hits = tuple(
            DogLink(directory.names[i], directory.ids[i], dog_href(run_id, directory.ids[i]))
            for i in search_dogs(directory, text)
        )
        page = SearchPage(run_id, runs, text, hits, len(directory.ids))
        return ExploreResponse(200, ENV.get_template("explore.html.j2").render(p=page, plotly_src=self.plotly_src))

    def _dog(self, run_id: str, dog_id: str, vs: str | None) -> ExploreResponse:
        directory = self.source.directory(run_id)
        for want in (dog_id, vs):
            if want is not None and want not in set(directory.ids):
                return self._error(_unknown_dog(directory, want))
        rec = self.source.dog(run_id, dog_id)
        other = self.source.dog(run_id, vs) if vs is not None and vs != dog_id else None
        page = dog_page(rec, other)
        html = ENV.get_template("explore_dog.html.j2").render(
            p=page, payload=Markup(page.payload), plotly_src=self.plotly_src, colours=COHORT_COLOURS,
            self_href=dog_href(run_id, dog_id), search_href=f"/explore?run={quote(run_id, safe='')}",
        )
        return ExploreResponse(200, html)

    def _error(self, page: ErrorPage) -> ExploreResponse:
        return ExploreResponse(page.status, ENV.get_template("explore_error.html.j2").render(p=page))


def _public(e: Exception) -> str:
    """An error's message without the store's paths (the page is for the browser, not the log)."""
    return re.sub(r"(/[^\s:;,'\"]+)+", "<path>", str(e))


def _query(query: str, allowed: set[str]) -> dict[str, str]:
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("the query string is malformed (expected name=value pairs joined by '&')") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        if k not in allowed:
            raise _BadRequest(f"unknown parameter {k[:40]!r}; this page takes {', '.join(sorted(allowed))}")
        if k in out:
            raise _BadRequest(f"parameter {k!r} given twice")
        out[k] = _value(k, v)
    return out


def _value(what: str, v: str) -> str:
    if len(v) > _MAX_VALUE or any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise _BadRequest(f"{what} is longer than {_MAX_VALUE} characters or holds control characters")
    return v


def _run_id(v: str) -> str:
    if not _RUN_ID.match(v):
        raise _BadRequest("a run id is letters, digits, '-', '_' and '.', at most 128 characters")
    return v


def _unknown_dog(directory: DogDirectory, want: str) -> ErrorPage:
    """404 with the closest names (or ids) in the run."""
    names = {str(n).casefold(): i for i, n in enumerate(directory.names)}
    ids = {str(d).casefold(): i for i, d in enumerate(directory.ids)}
    close = difflib.get_close_matches(want.casefold(), list(names), n=5, cutoff=0.5)
    picks = [names[c] for c in close] + [ids[c] for c in difflib.get_close_matches(want.casefold(), list(ids), n=3)]
    seen, links = set(), []
    for i in picks:
        if i not in seen:
            seen.add(i)
            links.append(DogLink(directory.names[i], directory.ids[i], dog_href(directory.run_id, directory.ids[i])))
    return ErrorPage(404, "No such dog", f"Run {directory.run_id} has no dog with id {want!r}.", tuple(links[:5]))


# ---------------------------------------------------------------------- the dog's page


def dog_page(rec: DogRecord, vs: DogRecord | None = None) -> DogPage:
    """The page model of a dog (and of the dog it is compared with)."""
    st = rec.states
    races, status, notes, p = _races(rec)
    dogs = [_dog_data(rec, status, p)]
    if vs is not None:
        _, vs_status, _, vs_p = _races(vs)
        dogs.append(_dog_data(vs, vs_status, vs_p))
    payload: dict[str, Any] = {"dogs": dogs, "colours": dict(COHORT_COLOURS), "cohort_layer": rec.cohort_layer,
                               "colorscale": _COLORSCALE}
    if vs is not None:
        t = pair_divergence(st.h, vs.states.h)
        payload["divergence"] = {"step": list(range(1, len(t) + 1)), "d": _floats(t)}
    plateau = None if not math.isfinite(rec.plateau_step) else int(rec.plateau_step)
    return DogPage(
        run_id=rec.run_id, name=str(st.dog_name), id=str(st.dog_id), cohort=rec.cohort or "unknown", plateau=plateau,
        n_races=len(st.step), seeds=rec.seeds, rule=_rule_text(rec.rule), cohort_layer=rec.cohort_layer,
        races=races, vs=None if vs is None else DogLink(str(vs.states.dog_name), str(vs.states.dog_id),
                                                         dog_href(rec.run_id, str(vs.states.dog_id))),
        vs_cohort=None if vs is None else (vs.cohort or "unknown"), notes=notes, payload=_json(payload),
    )


def _races(rec: DogRecord) -> tuple[tuple[RaceRow, ...], list[str], tuple[str, ...], np.ndarray]:
    """The race rows, the status before each race, notes and the (T, S) win probabilities."""
    st = rec.states
    t = len(st.step)
    p = race_win_prob(rec.scores, rec.field_scores, rec.field_offsets)  # (T, S)
    notes = []
    if rec.s is not None and rec.f is not None and rec.rule is not None:
        rule = CohortRule.coerce(dict(rec.rule))
        status = list(status_at_prediction(rec.s, rec.f, st.step, np.array([0, t]),
                                           np.array([rec.plateau_step]), rule).status)
    else:
        status = ["unknown"] * t
        notes.append("The run's stats (stats/dog_step.parquet, summary.json) are missing: no abs-sum, band or status.")
    dates = np.datetime_as_string(np.asarray(st.race_date, dtype="datetime64[D]"))
    runners = np.diff(rec.field_offsets)
    rows = tuple(
        RaceRow(int(st.step[i]), str(dates[i]).replace("NaT", ""), str(st.race_id[i]), int(runners[i]),
                tuple(_f(v, 3) for v in p[i]), _f(rec.market_prob[i], 3), _result(rec.won[i]), str(status[i]))
        for i in range(t)
    )
    return rows, status, tuple(notes), p


def _dog_data(rec: DogRecord, status: Sequence[str], p: np.ndarray) -> dict[str, Any]:
    """One dog's figure data: states and gates (base64 float32, (T, L, H)), s, its band, probabilities (T, S)."""
    st = rec.states
    t, n_layers, n_units = st.h.shape
    band = rec.band
    return {
        "id": label(st.dog_id), "name": label(st.dog_name), "cohort": rec.cohort or "unknown",
        "n_steps": int(t), "n_layers": int(n_layers), "n_units": int(n_units),
        "plateau": None if not math.isfinite(rec.plateau_step) else int(rec.plateau_step),
        "dates": [str(d).replace("NaT", "") for d in np.datetime_as_string(np.asarray(st.race_date, "datetime64[D]"))],
        "h": _b64(st.h), "z": _b64(st.z), "r": _b64(st.r),
        "s": None if rec.s is None else _floats(rec.s),
        "band": None if band is None else {"step": band.step.tolist(), "lo": _floats(band.lo),
                                           "mid": _floats(band.mid), "hi": _floats(band.hi)},
        "seeds": list(rec.seeds), "model": [_floats(p[:, k]) for k in range(p.shape[1])],
        "market": _floats(rec.market_prob), "won": _floats(rec.won), "status": list(status),
    }


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _f(v: Any, digits: int = 4) -> float | None:
    v = float(v)
    return round(v, digits) if math.isfinite(v) else None


def _floats(a: np.ndarray, digits: int = 4) -> list[float | None]:
    a = np.round(np.asarray(a, dtype=np.float64), digits)
    return [v if v == v and abs(v) != math.inf else None for v in a.tolist()]


def _result(won: float) -> str:
    return "unknown" if not math.isfinite(float(won)) else ("won" if won > 0.5 else "lost")


def _rule_text(rule: Any) -> str:
    if not rule:
        return "unknown (no stats/summary.json)"
    try:
        r = CohortRule.coerce(dict(rule))
    except (ConfigError, TypeError, ValueError):
        return json.dumps(rule, sort_keys=True)[:300]
    return (f"{r.name} v{r.version}: plateau after {r.k} steps whose s moved less than {r.delta:g} (relative) over "
            f"{r.w} steps; saturated when the mean share of units with |h| >= {r.tau:g} from the plateau on is >= "
            f"{r.theta:g}, unsaturated below {r.low:g}")


def _json(obj: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' characters left."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
