"""A small GRU model for the runner tests, registered like a team's own (`gruviz model register`).

Its forward pass obeys fault files in `fault_dir` (a factory argument stored with the model set),
so the faults live in test code, not in gruviz, and reach any process that runs a block:

- `hang`: the forward pass waits (in short sleeps, so a task timeout can interrupt it) until the
  file is removed; each waiting process appends its pid to `hung`.
- `kill`: the first process to claim the file (an atomic rename to `killed.<pid>`) ends itself
  with `os._exit(1)`, as a worker killed mid-block would; the others run normally.
- `block`: the first forward pass to claim the file (renamed to `blocked.<pid>`) sleeps as many seconds
  as it says in ONE call, as a block stuck in a blocking call would (a task timeout cannot interrupt it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from gruviz_core.features import CONTEXT_NAMES, FEATURE_NAMES

__version__ = "1.0"


class FaultyModel(nn.Module):
    """GRU over a dog's races; the state before race t and race t's context score the dog."""

    def __init__(self, fault_dir: str = "", hidden: int = 8, layers: int = 1):
        super().__init__()
        self.fault_dir = fault_dir
        self.rnn = nn.GRU(len(FEATURE_NAMES), hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden + len(CONTEXT_NAMES), 1)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """x: (B, T, F), ctx: (B, T, C) -> (B, T) scores."""
        if self.fault_dir:
            _obey_faults(Path(self.fault_dir))
        h, _ = self.rnn(x)  # (B, T, H)
        h_prev = nn.functional.pad(h, (0, 0, 1, 0))[:, :-1]  # state before race t
        return self.head(torch.cat([h_prev, ctx], dim=-1)).squeeze(-1)


def build(fault_dir: str = "", hidden: int = 8, layers: int = 1) -> FaultyModel:
    return FaultyModel(fault_dir=fault_dir, hidden=hidden, layers=layers)


def _obey_faults(d: Path) -> None:
    if (d / "kill").exists():
        try:
            os.rename(d / "kill", d / f"killed.{os.getpid()}")
        except FileNotFoundError:
            pass  # another process claimed it
        else:
            os._exit(1)
    if (d / "block").exists():
        claimed = d / f"blocked.{os.getpid()}"
        try:
            os.rename(d / "block", claimed)
        except FileNotFoundError:
            pass  # another forward pass claimed it
        else:
            time.sleep(float(claimed.read_text()))
    if (d / "hang").exists():
        with open(d / "hung", "a") as f:
            f.write(f"{os.getpid()}\n")
        while (d / "hang").exists():
            time.sleep(0.05)
