"""The built-in race model and the adapter through which any GRU model is run.

The GRU reads a dog's races in date order. Its state after race t-1, with the context of
race t (known before the off: box, distance, track, price), scores the dog for race t; the
scores of a race's runners become win probabilities by a softmax within the race.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from gruviz_core.errors import AmbiguousGRUError, FeatureMismatchError, NoGRUError

__all__ = ["ModelConfig", "RaceGRU", "LoadedModel", "find_gru", "ModelOutput"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and training knobs of the built-in model."""

    n_features: int
    """Width of the per-race feature vector the GRU reads."""
    n_context: int
    """Width of the pre-race context vector the head reads beside the state."""
    hidden_size: int = 64
    """GRU units per layer; 64 learns the Iggy data as well as 128 at half the store."""
    num_layers: int = 1
    """Stacked GRU layers; extraction keeps every layer's states."""
    dropout: float = 0.0
    """Dropout between GRU layers (only used when num_layers > 1)."""
    head_hidden: int = 32
    """Width of the scoring head's hidden layer."""
    seed: int = 0
    """Seed of weight init and batch order; K seeds make a model set."""
    context_skip: bool = False
    """Add a linear term of the context to the score (starting at 0), so the GRU and head learn a
    correction to what the context already says (e.g. the market's log-odds), as racing models do."""
    box_columns: tuple[int, ...] = ()
    """Context positions of the box one-hots; with `track_columns`, a learned box x track table (starting at 0)
    is added to the score: box bias is track-specific. Empty: no such term."""
    track_columns: tuple[int, ...] = ()
    """Context positions of track one-hots (model sets from before the track embedding); empty otherwise."""
    track_column: int = -1
    """Context position of an integer track index (0 unknown, 1..n_tracks-1 the stored vocabulary): the head
    reads a learned `track_dim` embedding of it instead of the raw number, and with `box_columns` a learned
    box x track table (one row of box effects per track, starting at 0) is added to the score. -1: none."""
    n_tracks: int = 0
    """Levels of the track index (vocabulary + the unknown bucket)."""
    track_dim: int = 8
    """Width of the learned track embedding."""


class RaceGRU(nn.Module):
    """GRU over a dog's races + a head scoring the next race from (state, context)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gru = nn.GRU(
            cfg.n_features, cfg.hidden_size, cfg.num_layers,
            batch_first=True, dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        embed = cfg.track_column >= 0
        if embed and not (0 <= cfg.track_column < cfg.n_context and cfg.n_tracks > 0):
            raise FeatureMismatchError(f"model: track_column={cfg.track_column} and n_tracks={cfg.n_tracks} do not fit "
                                       f"a context of {cfg.n_context} columns; name a context column and n_tracks >= 1")
        n_dense = cfg.n_context - 1 if embed else cfg.n_context
        self.head = nn.Sequential(
            nn.Linear(cfg.hidden_size + n_dense + (cfg.track_dim if embed else 0), cfg.head_hidden),
            nn.ReLU(),
            nn.Linear(cfg.head_hidden, 1),
        )
        self.skip = nn.Linear(n_dense, 1, bias=False) if cfg.context_skip else None
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)
        self.track_emb = self.box_track_emb = None
        if embed:
            self.track_emb = nn.Embedding(cfg.n_tracks, cfg.track_dim)
            dense = [i for i in range(cfg.n_context) if i != cfg.track_column]
            self.register_buffer("_dense_idx", torch.tensor(dense, dtype=torch.long), persistent=False)
            if cfg.box_columns:
                self.box_track_emb = nn.Embedding(cfg.n_tracks, len(cfg.box_columns))
                nn.init.zeros_(self.box_track_emb.weight)
                self.register_buffer("_box_idx", torch.tensor(list(cfg.box_columns), dtype=torch.long),
                                     persistent=False)
        self.box_track = None
        if cfg.box_columns and cfg.track_columns and not embed:
            self.box_track = nn.Parameter(torch.zeros(len(cfg.box_columns), len(cfg.track_columns)))
            self.register_buffer("_box_idx", torch.tensor(list(cfg.box_columns), dtype=torch.long), persistent=False)
            self.register_buffer("_track_idx", torch.tensor(list(cfg.track_columns), dtype=torch.long), persistent=False)

    def dense_context(self, ctx: torch.Tensor) -> torch.Tensor:
        """(..., C) context -> the columns the head and skip read as numbers (all but the track index)."""
        return ctx.index_select(-1, self._dense_idx) if self.track_emb is not None else ctx

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """x: (B, T, F) race features, ctx: (B, T, C) pre-race context -> (B, T) scores."""
        h, _ = self.gru(x)  # (B, T, H): state after race t
        h_prev = nn.functional.pad(h, (0, 0, 1, 0))[:, :-1]  # (B, T, H): state before race t, h_0 = 0
        if self.track_emb is not None:
            track = ctx[..., self.cfg.track_column].round().long().clamp(0, self.cfg.n_tracks - 1)  # (B, T)
            dense = ctx.index_select(-1, self._dense_idx)
            score = self.head(torch.cat([h_prev, dense, self.track_emb(track)], dim=-1)).squeeze(-1)
            if self.skip is not None:
                score = score + self.skip(dense).squeeze(-1)
            if self.box_track_emb is not None:  # box one-hots . the track's row of box effects
                score = score + (ctx.index_select(-1, self._box_idx) * self.box_track_emb(track)).sum(-1)
            return score
        score = self.head(torch.cat([h_prev, ctx], dim=-1)).squeeze(-1)
        if self.skip is not None:
            score = score + self.skip(ctx).squeeze(-1)
        if self.box_track is not None:  # (B, T, boxes) @ (boxes, tracks) . (B, T, tracks)
            box, track = ctx.index_select(-1, self._box_idx), ctx.index_select(-1, self._track_idx)
            score = score + ((box @ self.box_track) * track).sum(-1)
        return score


_HOOK_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_HOOK_LOCKS_GUARD = threading.Lock()


def _hook_lock(module: nn.Module) -> threading.Lock:
    """One lock per GRU: hooks are per module, so two threads running one model at once would
    capture each other's tensors (seen as a shape error, or silently wrong states when shapes match)."""
    with _HOOK_LOCKS_GUARD:
        lock = _HOOK_LOCKS.get(module)
        if lock is None:
            lock = _HOOK_LOCKS[module] = threading.Lock()
        return lock


@dataclass(frozen=True)
class ModelOutput:
    """One forward pass of a model over a padded batch, with what went in and out of its GRU."""

    scores: torch.Tensor
    """(B, T) score of each race from the state before it."""
    gru_input: torch.Tensor
    """(B, T, I) what the GRU read, batch first."""
    gru_output: torch.Tensor
    """(B, T, H) the fused nn.GRU's top-layer output, batch first."""


def find_gru(module: nn.Module, path: str | None = None) -> tuple[str, nn.GRU]:
    """The GRU inside `module`: at dotted `path`, else the only one."""
    if path:
        gru = module.get_submodule(path)
        if not isinstance(gru, nn.GRU):
            raise NoGRUError(f"model: {path!r} is a {type(gru).__name__}, not torch.nn.GRU; name a GRU submodule")
        return path, gru
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.GRU)]
    if not found:
        raise NoGRUError(f"model {type(module).__name__}: no torch.nn.GRU inside; gruviz looks inside GRUs only")
    if len(found) > 1:
        names = ", ".join(n for n, _ in found)
        raise AmbiguousGRUError(f"model {type(module).__name__}: several GRUs ({names}); name one with gru_path")
    return found[0]


@dataclass(frozen=True)
class LoadedModel:
    """Any model whose forward is `module(x (B,T,F), ctx (B,T,C)) -> (B,T) scores`, with a GRU inside.

    `run` captures the GRU's input and fused output with forward hooks, so extraction can
    recompute every layer and gate from the GRU's own weights and check them against cuDNN/MKL.
    """

    module: nn.Module
    gru: nn.GRU
    gru_path: str
    feature_names: tuple[str, ...]
    context_names: tuple[str, ...]
    model_id: str = "unnamed"
    extra: dict = field(default_factory=dict)

    @classmethod
    def wrap(
        cls, module: nn.Module, feature_names, context_names, *, gru_path: str | None = None, model_id: str = "unnamed"
    ) -> LoadedModel:
        path, gru = find_gru(module, gru_path)
        return cls(module.eval(), gru, path, tuple(feature_names), tuple(context_names), model_id)

    def run(self, x: torch.Tensor, ctx: torch.Tensor) -> ModelOutput:
        """One forward pass; x: (B, T, F), ctx: (B, T, C)."""
        if x.shape[-1] != len(self.feature_names):
            raise FeatureMismatchError(
                f"model {self.model_id}: input has {x.shape[-1]} features, spec names {len(self.feature_names)}"
            )
        seen: dict[str, torch.Tensor] = {}

        def _pre(_m, args):
            seen["in"] = args[0]

        def _post(_m, _args, out):
            seen["out"] = out[0]

        with _hook_lock(self.gru):  # thread-safe; give each thread its own copy for parallelism
            hooks = [self.gru.register_forward_pre_hook(_pre), self.gru.register_forward_hook(_post)]
            try:
                scores = self.module(x, ctx)
            finally:
                for h in hooks:
                    h.remove()
        if isinstance(seen.get("in"), nn.utils.rnn.PackedSequence):
            raise FeatureMismatchError(
                f"model {self.model_id}: its GRU is fed a PackedSequence; gruviz needs padded input to the GRU"
            )
        gin, gout = seen["in"], seen["out"]
        if not self.gru.batch_first:
            gin, gout = gin.transpose(0, 1), gout.transpose(0, 1)
        return ModelOutput(scores=scores, gru_input=gin, gru_output=gout)
