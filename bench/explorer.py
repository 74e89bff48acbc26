"""Benchmark the explorer: the time to answer a 150-race dog's page, as a ratio to reading that dog's states
alone, in the same process, on a run made by the real pipeline pieces (64 units, 3 seeds). Prints one JSON line.

    flock /tmp/gruviz-heavy.lock .venv/bin/python bench/explorer.py [--dogs 2000] [--layers 2] [--repeat 20]

`page_ms` is the median over `--repeat` requests once the run's per-row tables are in memory (the first
page of a run reads them: `first_page_ms`); `states_ms` is the median of `StatesReader.dog(id)` alone.

Measured on the 2-core dev machine, shared (300 dogs, 45,000 rows, 2 layers x 64 units, 3 seeds; a 150-race dog):
states 7.5 ms, page 25.9 ms (3.46x the states alone; 354 KiB), with a second dog 37.9 ms, search 1.1 ms,
first page of the run 209 ms (reads the run's per-row tables once).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reports.explorer import ExplorerApp, dog_href  # noqa: E402
from storage.explore import ExploreStore  # noqa: E402
from storage.states import open_states  # noqa: E402
from tests.test_explorer import make_store  # noqa: E402


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dogs", type=int, default=2000)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    field = 6
    races = a.dogs * 150 // field  # 150 races per dog on average
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        t0 = time.perf_counter()
        run = make_store(root, run_id="bench", n_dogs=a.dogs, n_races=races, field=field, hidden=64,
                         layers=a.layers, seeds=3)
        build_s = time.perf_counter() - t0
        idx = open_states(run).index()
        dog_id = str(idx.iloc[(idx["row_size"] - 150).abs().argmin()]["dog_id"])
        n_races = int(idx.loc[idx["dog_id"] == dog_id, "row_size"].iloc[0])
        source = ExploreStore(root)
        app = ExplorerApp(source)
        href = dog_href("bench", dog_id)
        t1 = time.perf_counter()
        first = app(href)
        first_ms = 1000 * (time.perf_counter() - t1)
        assert first.status == 200, first.html[:300]
        reader = open_states(run)
        reader.dog(dog_id)  # warm the reader's array handles, as the store's are
        states_ms = _median_ms(lambda: reader.dog(dog_id), a.repeat)
        page_ms = _median_ms(lambda: app(href), a.repeat)
        vs_id = str(idx["dog_id"].iloc[0])
        vs_ms = _median_ms(lambda: app(dog_href("bench", dog_id, vs=vs_id)), max(5, a.repeat // 4))
        search_ms = _median_ms(lambda: app("/explore?run=bench&q=dog%201"), a.repeat)
    print(json.dumps({
        "dogs": a.dogs, "obs": int(idx["row_size"].sum()), "layers": a.layers, "units": 64, "seeds": 3,
        "dog_races": n_races, "page_kb": round(len(first.html.encode()) / 1024, 1),
        "states_ms": round(states_ms, 2), "page_ms": round(page_ms, 2), "page_over_states": round(page_ms / states_ms, 2),
        "page_vs_ms": round(vs_ms, 2), "search_ms": round(search_ms, 2), "first_page_ms": round(first_ms, 1),
        "build_s": round(build_s, 1),
    }))


if __name__ == "__main__":
    main()
