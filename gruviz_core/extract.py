"""Every hidden state and gate of a GRU model, for every step of every dog.

A fused `nn.GRU` (cuDNN, MKL) returns only the top layer's states and no gates. Extraction runs
the model as is (its scores and the GRU's fused output, captured by hooks), then recomputes
every layer from the GRU's own weights: the input projection for all steps in one matmul, then
the recurrence over t. The recomputed top layer must equal the fused output within `CHECK_TOL`
on every extraction, otherwise `ExtractionCheckError` names the dog and step.

PyTorch's gates (weights stacked r, z, n):

    r = σ(W_ir x + b_ir + W_hr h + b_hr)      z = σ(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))      h' = (1 - z) * n + z * h

Dogs go through in batches sorted by length (longest first), so at step t the active dogs are
a prefix of the batch and the recurrence only touches them, as packed sequences do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gruviz_core.errors import ConfigError, ExtractionCheckError, ModelError
from gruviz_core.model import LoadedModel
from gruviz_core.sequences import pad_batch

__all__ = [
    "CHECK_TOL",
    "BATCH_ELEMENTS",
    "choose_device",
    "length_batches",
    "GRUStates",
    "recompute_states",
    "check_top_layer",
    "BatchStates",
    "extract_batch",
    "iter_extract",
]

CHECK_TOL = 1e-5
"""Largest allowed |recomputed top-layer state - fused nn.GRU output|."""
BATCH_ELEMENTS = 8 << 20
"""Default size of one batch's (B, T, L, H) state tensor in elements (32 MB of float32)."""


def choose_device(requested: str | None = None) -> torch.device:
    """The device named, else `cuda` when available, else `mps`, else cpu."""
    if requested and requested != "auto":
        try:
            dev = torch.device(requested)
        except RuntimeError as e:
            raise ConfigError(f"device {requested!r}: not a torch device ({e}); use cpu, cuda, cuda:0, mps or auto") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {requested!r}: CUDA is not available here; use cpu or auto")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"device {requested!r}: MPS is not available here; use cpu or auto")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def length_batches(
    lengths: np.ndarray, *, batch_size: int = 1024, max_tokens: int = 1 << 18, min_fill: float = 0.7,
    min_batch: int = 64,
) -> list[np.ndarray]:
    """Positions into `lengths` grouped into batches, longest first within and across batches.

    A batch holds at most `batch_size` dogs and at most `max_tokens` padded steps (B * T_max),
    and once it has `min_batch` dogs it closes before a dog shorter than `min_fill` * T_max, so
    the long tail does not pad a batch of short careers. lengths: (D,) -> list of (B,) int64.
    """
    if batch_size < 1 or max_tokens < 1:
        raise ConfigError(f"extract: batch_size={batch_size}, max_tokens={max_tokens}; both must be >= 1")
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[order]
    batches: list[np.ndarray] = []
    i, n = 0, len(order)
    while i < n:
        t_max = max(int(sorted_len[i]), 1)
        take = max(1, min(batch_size, max_tokens // t_max, n - i))
        if take > min_batch:  # close early where lengths fall below min_fill * t_max
            short = int(np.searchsorted(-sorted_len[i : i + take], -min_fill * t_max, side="right"))
            take = max(min_batch, short)
        batches.append(order[i : i + take])
        i += take
    return batches


@dataclass(frozen=True)
class GRUStates:
    """Recomputed states and gates of every layer of a padded, length-sorted batch."""

    h: torch.Tensor
    """(B, T, L, H) state after each step; padded steps are 0."""
    z: torch.Tensor
    """(B, T, L, H) update gate (z -> 1 keeps the old state)."""
    r: torch.Tensor
    """(B, T, L, H) reset gate."""


def recompute_states(gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> GRUStates:
    """Every layer's h, z, r from the GRU's weights. x: (B, T, I) batch first, lengths (B,) descending."""
    if gru.bidirectional:
        raise ModelError("extract: bidirectional GRUs are not supported; gruviz reads a dog's races forwards only")
    b, t_max, _ = x.shape
    n_layers, n_units = gru.num_layers, gru.hidden_size
    # active[t]: how many dogs (a prefix, lengths descending) still have a step t
    active = (lengths[None, :] > torch.arange(t_max, device=lengths.device)[:, None]).sum(1).tolist()
    h_out = x.new_zeros(b, t_max, n_layers, n_units)
    z_out = x.new_zeros(b, t_max, n_layers, n_units)
    r_out = x.new_zeros(b, t_max, n_layers, n_units)
    inp = x
    for k in range(n_layers):
        w_ih, w_hh = getattr(gru, f"weight_ih_l{k}"), getattr(gru, f"weight_hh_l{k}")
        b_ih = getattr(gru, f"bias_ih_l{k}") if gru.bias else None
        b_hh = getattr(gru, f"bias_hh_l{k}") if gru.bias else None
        gi = nn.functional.linear(inp, w_ih, b_ih)  # (B, T, 3H): every step at once
        _recur(gi, w_hh, b_hh, active, h_out[:, :, k], z_out[:, :, k], r_out[:, :, k])
        inp = h_out[:, :, k]  # (B, T, H); eval mode, so no inter-layer dropout
    return GRUStates(h=h_out, z=z_out, r=r_out)


def _recur(
    gi: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None, active: list[int],
    h_out: torch.Tensor, z_out: torch.Tensor, r_out: torch.Tensor,
) -> None:
    """The recurrence of one layer over t, written into the (B, T, H) outputs."""
    n_units = w_hh.shape[1]
    h = gi.new_zeros(gi.shape[0], n_units)  # (B, H): h_0 = 0, as RaceGRU runs it
    for t, n in enumerate(active):
        if n == 0:
            break
        hp = h[:n]
        gh = nn.functional.linear(hp, w_hh, b_hh)  # (n, 3H)
        gx = gi[:n, t]
        rz = torch.sigmoid(gx[:, : 2 * n_units] + gh[:, : 2 * n_units])
        r, z = rz[:, :n_units], rz[:, n_units:]
        cand = torch.tanh(gx[:, 2 * n_units :] + r * gh[:, 2 * n_units :])
        h_new = torch.lerp(cand, hp, z)  # (1 - z) * n + z * h
        h_out[:n, t] = h_new
        z_out[:n, t] = z
        r_out[:n, t] = r
        h = h_new


def check_top_layer(
    h_top: torch.Tensor, fused: torch.Tensor, lengths: torch.Tensor, *, dog_ids: Sequence | None = None,
    model_id: str = "model", tol: float = CHECK_TOL,
) -> float:
    """Max |recomputed - fused| over valid steps; raises ExtractionCheckError above `tol`.

    h_top, fused: (B, T, H); lengths: (B,). `dog_ids` names the batch's dogs in the message.
    """
    t_max = h_top.shape[1]
    mask = torch.arange(t_max, device=h_top.device)[None, :] < lengths[:, None]  # (B, T)
    err = (h_top - fused[:, :t_max]).abs().amax(-1).masked_fill(~mask, 0.0)  # (B, T)
    if err.numel() == 0:
        return 0.0
    worst = int(err.argmax())
    max_err = float(err.view(-1)[worst])
    if not max_err <= tol:  # NaN fails too
        d, t = divmod(worst, t_max)
        who = dog_ids[d] if dog_ids is not None else f"batch position {d}"
        raise ExtractionCheckError(
            f"extract {model_id}: recomputed GRU state differs from the fused nn.GRU output by {max_err:.3g} "
            f"(> {tol:g}) at dog {who}, step {t + 1}; the module's GRU is not run as a plain nn.GRU "
            "(modified forward, hooks, or input changed between the fused run and the recomputation)"
        )
    return max_err


@dataclass(frozen=True)
class BatchStates:
    """One model's output for a batch of dogs, flattened to valid rows, dog by dog in batch order."""

    dogs: np.ndarray
    """(B,) int64 dog indices, in the order their rows appear below."""
    lengths: np.ndarray
    """(B,) int64 steps of each dog."""
    h: np.ndarray
    """(rows, L, H) float16 state after each step."""
    z: np.ndarray
    """(rows, L, H) float16 update gate."""
    r: np.ndarray
    """(rows, L, H) float16 reset gate."""
    score: np.ndarray
    """(rows,) float32 the model's score of each race."""
    max_err: float
    """Largest |recomputed - fused| top-layer state in this batch."""


def extract_batch(
    model: LoadedModel, values: np.ndarray, context: np.ndarray, offsets: np.ndarray, dogs: np.ndarray,
    *, device: torch.device, dog_ids: Sequence | None = None,
) -> BatchStates:
    """Scores, states and gates of `dogs` (indices, any order) under one model.

    values: (obs, F), context: (obs, C), offsets: (dog + 1,). Dogs are sorted longest first
    internally and dogs without rows dropped; the result lists them in that order.
    """
    dogs = np.asarray(dogs, dtype=np.int64)
    lengths_np = np.diff(offsets)[dogs]
    order = np.argsort(-lengths_np, kind="stable")
    dogs = dogs[order][lengths_np[order] > 0]
    if len(dogs) == 0:
        empty = np.zeros((0, model.gru.num_layers, model.gru.hidden_size), dtype=np.float16)
        return BatchStates(dogs=dogs, lengths=np.zeros(0, np.int64), h=empty, z=empty, r=empty,
                           score=np.zeros(0, np.float32), max_err=0.0)
    x_np, lengths_np = pad_batch(values, offsets, dogs)
    c_np, _ = pad_batch(context, offsets, dogs)
    with torch.inference_mode():
        x = torch.from_numpy(x_np).to(device)
        ctx = torch.from_numpy(c_np).to(device)
        lengths = torch.from_numpy(lengths_np).to(device)
        out = model.run(x, ctx)
        states = recompute_states(model.gru, out.gru_input, lengths)
        names = [dog_ids[int(d)] for d in dogs] if dog_ids is not None else [int(d) for d in dogs]
        max_err = check_top_layer(states.h[:, :, -1], out.gru_output, lengths, dog_ids=names, model_id=model.model_id)
        mask = torch.arange(x.shape[1], device=device)[None, :] < lengths[:, None]  # (B, T)
        h = states.h[mask].half().cpu().numpy()  # (rows, L, H), dog-major: dog 0's steps, then dog 1's
        z = states.z[mask].half().cpu().numpy()
        r = states.r[mask].half().cpu().numpy()
        score = out.scores[mask].float().cpu().numpy()
    return BatchStates(dogs=dogs, lengths=lengths_np, h=h, z=z, r=r, score=score, max_err=max_err)


def iter_extract(
    models: Sequence[LoadedModel], values: np.ndarray, context: np.ndarray, offsets: np.ndarray, dogs: np.ndarray,
    *, device: torch.device | str | None = None, batch_size: int = 1024, max_tokens: int | None = None,
    dog_ids: Sequence | None = None,
) -> Iterator[tuple[int, BatchStates]]:
    """(seed position, BatchStates) for every length-sorted batch of `dogs` under each model in turn.

    `max_tokens` (padded steps per batch) defaults to BATCH_ELEMENTS / (layers * units), so a
    batch's (B, T, L, H) tensors stay about 32 MB whatever the model's size.
    """
    dev = device if isinstance(device, torch.device) else choose_device(device)
    dogs = np.asarray(dogs, dtype=np.int64)
    if max_tokens is None and models:
        max_tokens = max(256, BATCH_ELEMENTS // (models[0].gru.num_layers * models[0].gru.hidden_size))
    batches = length_batches(np.diff(offsets)[dogs], batch_size=batch_size, max_tokens=max_tokens)
    with _full_float32(dev):
        for s, model in enumerate(models):
            model.module.to(dev).eval()
            for pos in batches:
                yield s, extract_batch(model, values, context, offsets, dogs[pos], device=dev, dog_ids=dog_ids)


@contextmanager
def _full_float32(dev: torch.device):
    """No TF32 on CUDA while extracting: cuDNN may run the fused GRU in TF32 (10-bit mantissa), which
    would fail the 1e-5 check against the float32 recomputation for reasons unrelated to the model."""
    if dev.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
