"""A team's own GRU race model, as `gruviz model register` takes it (docs/byo.md walks through it).

- `build(hidden=..., layers=...)`: the factory; a two-layer GRU under `encoder.rnn` and a head
  that is not gruviz's (a gated mix of the state and the context, then a bilinear score).
- `features(runs)`: the team's own features from gruviz's canonical runs table
  (gruviz_core/schema.py), one row per run in the order given: what the GRU reads after a race,
  and the context its head knows before the next one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

__version__ = "1.0"

FEATURES = ("won", "log_place", "beaten_lengths", "box", "km", "price_logit")
CONTEXT = ("box", "km", "days_off")


class TeamModel(nn.Module):
    """GRU over a dog's races; the state before race t and race t's context score the dog."""

    def __init__(self, hidden: int = 12, layers: int = 2):
        super().__init__()
        self.encoder = nn.ModuleDict({"rnn": nn.GRU(len(FEATURES), hidden, layers, batch_first=True)})
        self.gate = nn.Linear(len(CONTEXT), hidden)
        self.score = nn.Bilinear(hidden, len(CONTEXT), 1)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """x: (B, T, 6), ctx: (B, T, 3) -> (B, T) scores."""
        h, _ = self.encoder["rnn"](x)  # (B, T, H)
        h_prev = nn.functional.pad(h, (0, 0, 1, 0))[:, :-1]  # state before race t
        mixed = h_prev * torch.sigmoid(self.gate(ctx))
        return self.score(mixed, ctx).squeeze(-1)


def build(hidden: int = 12, layers: int = 2) -> TeamModel:
    return TeamModel(hidden=hidden, layers=layers)


def features(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical runs (sorted by dog, date) -> (features (obs, 6), context (obs, 3)); NaN = missing."""
    num = lambda c: runs[c].astype("Float64").to_numpy(np.float64, na_value=np.nan)  # noqa: E731
    dates = runs["race_date"].to_numpy("datetime64[D]").astype(np.int64).astype(np.float64)
    first = np.r_[True, runs["dog_id"].to_numpy()[1:] != runs["dog_id"].to_numpy()[:-1]]
    days_off = np.where(first, np.nan, np.diff(dates, prepend=np.nan))
    price = num("sp_decimal")
    feats = pd.DataFrame({
        "won": runs["won"].astype("Float64").to_numpy(np.float64, na_value=np.nan),
        "log_place": np.log(np.clip(num("finish_pos"), 1, None)),
        "beaten_lengths": np.clip(num("margin_lengths"), 0, 20) / 5.0,
        "box": num("box") / 8.0,
        "km": num("distance_m") / 1000.0,
        "price_logit": -np.log(np.clip(price - 1.0, 0.01, None)),
    })
    ctx = pd.DataFrame({"box": num("box") / 8.0, "km": num("distance_m") / 1000.0,
                        "days_off": np.log1p(np.clip(days_off, 0, None))})
    return feats, ctx
