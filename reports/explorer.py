"""The explorer: any dog's hidden states, gates, abs-sum, plateau and predictions, as pages built on demand.

    /explore                               search (name or id prefix) over the latest published run
    /explore?run=<run_id>&q=<text>         ... over a chosen run
    /explore/<run_id>/dog/<dog_id>         a dog's page
    /explore/<run_id>/dog/<dog_id>?vs=<id> ... with a second dog beside it and the two-dog divergence
    /explore/<run_id>/unit/<seed>/<layer>/<unit>
                                           a unit's page: what it tracks best (the probe atlas), its value
                                           by race count on a sample of dogs, the dogs where it runs highest
                                           and lowest; seed is the seed's position (0..seeds-1)
    /explore/<run_id>/units?q=<quantity>   the search "units that track X": for a quantity of the probe atlas, the
                                           units of every seed and layer that track it best, linked to their pages

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
from gruviz_core.explore import (
    DogDirectory,
    DogRecord,
    RunInfo,
    UnitAtlas,
    UnitRecord,
    extreme_dogs,
    race_win_prob,
    search_dogs,
    unit_by_step,
    units_tracking,
)
from gruviz_core.probes import QUANTITIES
from gruviz_core.resilience import pair_divergence
from reports.model import COHORT_COLOURS
from reports.plot_base import label
from reports.render import ENV

__all__ = ["ExploreSource", "ExploreResponse", "ExplorerApp", "DogPage", "SearchPage", "ErrorPage", "UnitPage",
           "TrackPage", "dog_href", "unit_href", "track_href", "PLOTLY_SRC"]

PLOTLY_SRC = "/assets/plotly.min.js"
"""The reports directory's offline plotly.js, as the server serves it (storage.site.ASSET)."""
_RUN_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,127}$")
_MAX_VALUE = 200
"""Longest query value or dog id accepted (longer is a malformed request)."""
_COLORSCALE = [[i / (len(sequential.RdBu_r) - 1), c] for i, c in enumerate(sequential.RdBu_r)]
"""The report's diverging scale (blue -1, white 0, red +1), for plotly.js."""
_PARAMS = {"search": {"run", "q"}, "dog": {"vs"}, "unit": set(), "units": {"q"}}
_INDEX = re.compile(r"^[0-9]{1,6}$")
"""A seed position, layer or unit in a unit page's path."""
_DOC = {q.name: q.doc for q in QUANTITIES}
_TOP_QUANTITIES = 5
"""Quantities a unit page lists before the rest (behind <details>)."""
_MIN_STEP_ROWS = 10
"""Fewest sampled races at a race count for its quartiles to be drawn."""
_TRACK_PER_LAYER = 5
"""Units of each seed and layer the search "units that track X" lists."""


class ExploreSource(Protocol):
    """What the explorer reads (storage.explore.ExploreStore); NotFoundError for an unknown run or dog."""

    def runs(self) -> list[RunInfo]: ...

    def latest_run_id(self) -> str | None: ...

    def directory(self, run_id: str) -> DogDirectory: ...

    def dog(self, run_id: str, dog_id: str) -> DogRecord: ...

    def unit(self, run_id: str, seed: int, layer: int, unit: int) -> UnitRecord: ...

    def atlas(self, run_id: str) -> UnitAtlas: ...


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
    units: tuple[tuple[int, tuple[UnitLink, ...]], ...] = ()
    """(layer, its units of seed position 0) for the list beside the heatmaps."""
    units_note: str | None = None
    """Why the units carry no label (no probe atlas); None when they do."""


@dataclass(frozen=True)
class UnitLink:
    """A unit in a list: its page and what it tracks best."""

    unit: int
    """The unit."""
    href: str
    """Its page."""
    quantity: str | None
    """The quantity it tracks best (None: no probe atlas)."""
    rho: float | None
    """Its Spearman rho with that quantity."""
    doc: str
    """The quantity in words ('' without one)."""


@dataclass(frozen=True)
class QuantityRow:
    """One quantity on a unit's page."""

    quantity: str
    """Its name."""
    doc: str
    """In words."""
    rho: float
    """The unit's Spearman rho with it."""
    rank: int
    """The unit's rank for it among its layer's units (1 = best)."""
    n_rows: int
    """Rows the rho was computed on."""
    others: tuple[UnitLink, ...]
    """The layer's units that track it best (at most 5), this one included if among them."""
    track_href: str = ""
    """The search for the units of every seed that track it."""


@dataclass(frozen=True)
class UnitPage:
    """A unit's page."""

    run_id: str
    """The run."""
    seed: int
    """Seed position."""
    seed_value: int
    """Its seed value."""
    layer: int
    """The layer."""
    unit: int
    """The unit."""
    label: UnitLink
    """What it tracks best."""
    top: tuple[QuantityRow, ...]
    """The quantities it tracks best (largest |rho| first)."""
    rest: tuple[QuantityRow, ...]
    """The others."""
    note: str | None
    """Why there are no quantities; None when there are."""
    n_dogs: int
    """Dogs in the sample."""
    n_rows: int
    """Their races."""
    highest: tuple[tuple[DogLink, float, int], ...]
    """(dog, its mean h, its races) where the unit runs highest on average, highest first."""
    lowest: tuple[tuple[DogLink, float, int], ...]
    """... lowest, lowest first."""
    nav: tuple[tuple[str, str], ...]
    """(text, href) of the neighbouring units and the same unit under the other seeds."""
    payload: str
    """The figures' data, JSON."""
    scatter_dogs: int = 0
    """Dogs in the scatter against the quantity it tracks best (0: no scatter)."""


@dataclass(frozen=True)
class TrackRow:
    """A unit in the search "units that track X"."""

    seed: int
    """Seed position."""
    seed_value: int
    """Its seed value."""
    layer: int
    """The layer."""
    unit: int
    """The unit."""
    rho: float
    """Its Spearman rho with the quantity."""
    rank: int
    """Its rank among its seed's and layer's units (1 = the closest)."""
    n_rows: int
    """Rows the rho was computed on."""
    href: str
    """Its page."""


@dataclass(frozen=True)
class TrackPage:
    """The search "units that track X" over one run's probe atlas."""

    run_id: str
    """The run."""
    quantity: str
    """The quantity chosen ('' when none yet)."""
    doc: str
    """It in words."""
    quantities: tuple[tuple[str, str], ...]
    """(name, words) of every quantity the atlas has, for the choice."""
    rows: tuple[TrackRow, ...]
    """The units that track it best, largest |rho| first."""
    per_layer: int
    """Units listed per seed and layer."""
    seeds_best: tuple[tuple[int, float | None], ...]
    """(seed value, the largest |rho| of its units) per seed, to see whether the seeds agree."""
    note: str | None
    """Why nothing is listed (no atlas, or the quantity is absent); None when something is."""


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


def unit_href(run_id: str, seed: int, layer: int, unit: int) -> str:
    """The relative URL of a unit's page (seed: the seed's position)."""
    return f"/explore/{quote(run_id, safe='')}/unit/{int(seed)}/{int(layer)}/{int(unit)}"


def track_href(run_id: str, quantity: str | None = None) -> str:
    """The relative URL of the search "units that track X" (quantity None: the choice alone)."""
    href = f"/explore/{quote(run_id, safe='')}/units"
    return href + (f"?q={quote(quantity, safe='')}" if quantity else "")


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
        if len(segs) == 6 and segs[0] == "explore" and segs[2] == "unit":
            _query(parts.query, _PARAMS["unit"])
            return self._unit(_run_id(segs[1]), *(_index(w, v) for w, v in zip(("seed", "layer", "unit"), segs[3:])))
        if len(segs) == 3 and segs[0] == "explore" and segs[2] == "units":
            return self._track(_run_id(segs[1]), _query(parts.query, _PARAMS["units"]).get("q", ""))
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

    def _unit(self, run_id: str, seed: int, layer: int, unit: int) -> ExploreResponse:
        directory = self.source.directory(run_id)
        page = unit_page(self.source.unit(run_id, seed, layer, unit), directory)
        html = ENV.get_template("explore_unit.html.j2").render(
            p=page, payload=Markup(page.payload), plotly_src=self.plotly_src,
            search_href=f"/explore?run={quote(run_id, safe='')}",
        )
        return ExploreResponse(200, html)

    def _track(self, run_id: str, quantity: str) -> ExploreResponse:
        quantity = quantity.strip()
        if quantity and quantity not in _DOC:
            raise _BadRequest(f"unknown quantity {quantity[:40]!r}; one of {', '.join(_DOC)}")
        page = track_page(self.source.atlas(run_id), quantity)
        html = ENV.get_template("explore_units.html.j2").render(
            p=page, search_href=f"/explore?run={quote(run_id, safe='')}", action=track_href(run_id))
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


def _index(what: str, v: str) -> int:
    if not _INDEX.match(v):
        raise _BadRequest(f"a {what} in a unit page's path is a whole number (0, 1, ...), got {v[:20]!r}")
    return int(v)


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
    units = tuple((layer, tuple(_unit_link(rec.run_id, 0, layer, u, (rec.unit_labels or {}).get(layer, {}).get(u))
                                for u in range(st.h.shape[2]))) for layer in range(st.h.shape[1]))
    units_note = None if rec.unit_labels is not None else (
        "This run has no probe atlas, so the units carry no label; each unit's page still shows its value by race "
        "count.")
    return DogPage(
        run_id=rec.run_id, name=str(st.dog_name), id=str(st.dog_id), cohort=rec.cohort or "unknown", plateau=plateau,
        n_races=len(st.step), seeds=rec.seeds, rule=_rule_text(rec.rule), cohort_layer=rec.cohort_layer,
        races=races, vs=None if vs is None else DogLink(str(vs.states.dog_name), str(vs.states.dog_id),
                                                         dog_href(rec.run_id, str(vs.states.dog_id))),
        vs_cohort=None if vs is None else (vs.cohort or "unknown"), notes=notes, payload=_json(payload),
        units=units, units_note=units_note,
    )


def _unit_link(run_id: str, seed: int, layer: int, unit: int, label: tuple[str, float] | None) -> UnitLink:
    href = unit_href(run_id, seed, layer, unit)
    if label is None:
        return UnitLink(unit, href, None, None, "")
    return UnitLink(unit, href, label[0], _f(label[1], 2), _DOC.get(label[0], label[0]))


# ---------------------------------------------------------------------- a unit's page


def unit_page(rec: UnitRecord, directory: DogDirectory) -> UnitPage:
    """The page model of a unit: its quantities, its value by race count and its extreme dogs on the sample."""
    rows = tuple(
        QuantityRow(q.quantity, _DOC.get(q.quantity, q.quantity), round(float(q.rho), 3), q.rank, q.n_rows,
                    tuple(_unit_link(rec.run_id, rec.seed, rec.layer, u, (q.quantity, rho))
                          for u, rho in rec.best_units.get(q.quantity, ())), track_href(rec.run_id, q.quantity))
        for q in rec.quantities
    )
    best = rec.quantities[0] if rec.quantities else None
    tracks = _unit_link(rec.run_id, rec.seed, rec.layer, rec.unit, None if best is None else (best.quantity, best.rho))
    band = unit_by_step(rec.step, rec.value, min_rows=_MIN_STEP_ROWS)
    high, low = extreme_dogs(rec.dog_index, rec.value)

    def dogs(ms):
        return tuple((DogLink(str(directory.names[m.dog_index]), str(directory.ids[m.dog_index]),
                              dog_href(rec.run_id, str(directory.ids[m.dog_index]))), round(m.mean, 3), m.n)
                     for m in ms)

    nav = []
    if rec.unit > 0:
        nav.append((f"unit {rec.unit - 1}", unit_href(rec.run_id, rec.seed, rec.layer, rec.unit - 1)))
    if rec.unit + 1 < rec.n_units:
        nav.append((f"unit {rec.unit + 1}", unit_href(rec.run_id, rec.seed, rec.layer, rec.unit + 1)))
    nav += [(f"unit {rec.unit} of seed {rec.seeds[k]}", unit_href(rec.run_id, k, rec.layer, rec.unit))
            for k in range(len(rec.seeds)) if k != rec.seed]
    payload = {"step": band.step.tolist(), "n": band.n.tolist(), "lo": _floats(band.lo), "mid": _floats(band.mid),
               "hi": _floats(band.hi), "title": f"unit {rec.unit}, layer {rec.layer}, seed {rec.seeds[rec.seed]}"}
    if best is not None and len(rec.probe_x):
        payload["scatter"] = {
            "x": _floats(rec.probe_x), "y": _floats(rec.probe_h), "step": rec.probe_step.tolist(),
            "xlabel": label(_DOC.get(best.quantity, best.quantity)),
            "title": label(f"unit {rec.unit} against {_DOC.get(best.quantity, best.quantity)}: Spearman rho "
                           f"{best.rho:.2f} ({best.n_rows:,} probed rows; {len(rec.probe_x):,} drawn, "
                           f"{len(np.unique(rec.probe_dog)):,} dogs)"),
        }
    return UnitPage(
        run_id=rec.run_id, seed=rec.seed, seed_value=int(rec.seeds[rec.seed]), layer=rec.layer, unit=rec.unit,
        label=tracks, top=rows[:_TOP_QUANTITIES], rest=rows[_TOP_QUANTITIES:], note=rec.atlas_note,
        n_dogs=len(np.unique(rec.dog_index)), n_rows=len(rec.step), highest=dogs(high), lowest=dogs(low),
        nav=tuple(nav), payload=_json(payload),
        scatter_dogs=len(np.unique(rec.probe_dog)) if "scatter" in payload else 0,
    )


# ---------------------------------------------------------------------- units that track a quantity


def track_page(atlas: UnitAtlas, quantity: str, *, per_layer: int = _TRACK_PER_LAYER) -> TrackPage:
    """The page model of the search "units that track X" for one quantity ('' : the choice alone)."""
    table = atlas.table
    have = set() if table is None else set(table["quantity"].astype(str))
    choice = tuple((q.name, q.doc) for q in QUANTITIES if q.name in have)
    rows: tuple[TrackRow, ...] = ()
    seeds_best: tuple[tuple[int, float | None], ...] = ()
    note = atlas.note
    if table is not None and quantity:
        hits = units_tracking(table, quantity, per_layer=per_layer)
        rows = tuple(TrackRow(t.seed, int(atlas.seeds[t.seed]) if t.seed < len(atlas.seeds) else t.seed, t.layer,
                              t.unit, round(t.rho, 3), t.rank, t.n_rows, unit_href(atlas.run_id, t.seed, t.layer, t.unit))
                     for t in hits)
        best = {}
        for t in hits:
            best[t.seed] = max(best.get(t.seed, 0.0), abs(t.rho))
        seeds_best = tuple((int(v), _f(best[k], 3) if k in best else None) for k, v in enumerate(atlas.seeds))
        if not rows:
            note = (f"The probe atlas has no unit with a defined correlation with {_DOC[quantity]} (the source "
                    "does not carry it, or it never varies on the probed rows).")
    return TrackPage(atlas.run_id, quantity, _DOC.get(quantity, ""), choice, rows, per_layer, seeds_best, note)


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
