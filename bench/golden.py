"""Golden comparison of a whole night: run the demo on a fixed simulated input and fingerprint what
it publishes (every run table by content, run.json and the report page), so that two commits can be
compared: a refactor that should change no behaviour must print the same fingerprints.

    python bench/golden.py --out /tmp/golden-a          # at commit A
    python bench/golden.py --out /tmp/golden-b          # at commit B
    python bench/golden.py --compare /tmp/golden-a /tmp/golden-b

Set aside (clock- or run-dependent, replaced by placeholders before hashing): the run id (it carries a
random suffix), the flow run id, timestamps (created_at, finished_at, ISO instants), the code version
(git hash) and the temporary directory names. Everything else, every number and every word, counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

VOLATILE = [
    (re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(\+00:00|Z)?"), "<instant>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\d{8}T\d{6}Z"), "<stamp>"),  # model set ids start with their training time
]
# JSON keys whose values are timings or ids of this very run, dropped before hashing.
VOLATILE_KEYS = {"created_at", "finished_at", "code_version", "flow_run_id", "run_id", "settings", "seconds",
                 "tmp_dir", "run_dir"}


def run_demo(home: Path) -> dict:
    env = {**os.environ, "GRUVIZ_HOME": str(home), "GRUVIZ_SEEDS": "2", "GRUVIZ_HIDDEN_SIZE": "16",
           "GRUVIZ_RECIPIENTS": "[]", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    gruviz = Path(sys.executable).with_name("gruviz")
    out = subprocess.run([str(gruviz), "demo", "--dogs", "400", "--seed", "3", "--epochs", "2", "--night", "2026-11-30", "--json"],
                         env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"demo failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fingerprint(result: dict) -> dict[str, str]:
    run_dir = Path(result["run_dir"])
    run_id = result["run_id"]
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    volatile = [run_id, str(info.get("code_version", "")), str(info.get("flow_run_id", ""))]
    volatile += [str(Path(result["run_dir"]).parent.parent)]
    out: dict[str, str] = {}
    for path in sorted(run_dir.rglob("*.parquet")):
        df = pd.read_parquet(path)
        df = df.reindex(sorted(df.columns), axis=1)
        out[str(path.relative_to(run_dir))] = _hash(df.to_csv(index=False, float_format="%.9g"), volatile)
    for path in sorted(run_dir.rglob("*.json")):
        if "states.zarr" in path.parts:
            continue
        data = _drop_volatile(json.loads(path.read_text(encoding="utf-8")))
        out[str(path.relative_to(run_dir))] = _hash(json.dumps(data, sort_keys=True, default=str), volatile)
    page = Path(result["report"]).read_text(encoding="utf-8")
    out["report.html"] = _hash(page, volatile)
    return out


def _drop_volatile(data):
    if isinstance(data, dict):
        return {k: _drop_volatile(v) for k, v in data.items() if k not in VOLATILE_KEYS and "seconds" not in k}
    if isinstance(data, list):
        return [_drop_volatile(v) for v in data]
    return data


def _normalise(text: str, volatile: list[str]) -> str:
    for v in sorted((v for v in volatile if v), key=len, reverse=True):
        text = text.replace(v, "<volatile>")
    for pattern, repl in VOLATILE:
        text = pattern.sub(repl, text)
    return text


def _hash(text: str, volatile: list[str]) -> str:
    return hashlib.sha256(_normalise(text, volatile).encode()).hexdigest()[:16]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="Directory for this commit's fingerprints")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = p.parse_args()
    if args.compare:
        a, b = (json.loads((d / "fingerprints.json").read_text()) for d in args.compare)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        print(json.dumps({"same": not diff, "differ": diff, "files": len(set(a) | set(b))}))
        return 1 if diff else 0
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gruviz-golden-") as tmp:
        result = run_demo(Path(tmp) / "home")
        prints = fingerprint(result)
        page = Path(result["report"]).read_text(encoding="utf-8")
        (args.out / "report.normalised.html").write_text(_normalise(page, [result["run_id"]]), encoding="utf-8")
        for path in Path(result["run_dir"]).rglob("*.json"):
            if "states.zarr" not in path.parts:
                dest = args.out / "json" / path.relative_to(result["run_dir"])
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (args.out / "fingerprints.json").write_text(json.dumps(prints, indent=1, sort_keys=True))
    print(json.dumps({"files": len(prints), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
