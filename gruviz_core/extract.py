"""Every hidden state and gate of a GRU model, for every step of every dog.

A fused `nn.GRU` (cuDNN, MKL) returns only the top layer's states and no gates. Extraction runs
the model as is (its scores and its GRU's fused output, captured by hooks), then:

1. every layer's h at every step from fused kernels: the top layer's is the model's own fused
   output; each layer below runs as a fused single-layer GRU with that layer's weights, on the
   output of the layer under it (a 1-layer GRU runs nothing more);
2. with every h_{t-1} known, the gates of ALL steps at once: a few large matrix products over
   the valid steps (gathered by one precomputed index; padding is never computed),

       r = σ(W_ir x + b_ir + W_hr h + b_hr)      z = σ(W_iz x + b_iz + W_hz h + b_hz)
       n = tanh(W_in x + b_in + r * (W_hn h + b_hn))      h' = (1 - z) * n + z * h

   (PyTorch stacks the weights r, z, n);
3. the check, at every valid step of every layer: h_t = (1 - z) * n + z * h_{t-1} within
   `CHECK_TOL`. On the top layer this checks the model's own fused output, step by step, against
   the GRU's weights and the layers below run layer by layer; a failure raises
   `ExtractionCheckError` naming the dog, step and layer.

No Python loop runs over steps; on a CPU the gate maths loops over row chunks sized for the
cache (a GPU takes one chunk). Outputs are (rows, L, H) float16 (or float32 for a caller that summarises
them first), dog by dog, each written once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gruviz_core.errors import ConfigError, ExtractionCheckError, ModelError
from gruviz_core.model import LoadedModel

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
"""Largest allowed |h_t - ((1 - z) n + z h_{t-1})| at any step of any layer (and |recomputed - fused| state)."""
BATCH_ELEMENTS = 8 << 20
"""Default size of one batch's (B, T, L, H) state tensor in elements (32 MB of float32)."""
CHUNK_BYTES = 3 << 19
"""CPU: rows of gate maths per chunk, as bytes of the (rows, 3H) pre-activations (1.5 MB: fast GEMMs, cached
elementwise maths; 2048 rows at H = 64)."""


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
    """States and gates of every layer of a padded batch, from the GRU's weights (see `recompute_states`)."""

    h: torch.Tensor
    """(B, T, L, H) state after each step; padded steps are 0."""
    z: torch.Tensor
    """(B, T, L, H) update gate (z -> 1 keeps the old state)."""
    r: torch.Tensor
    """(B, T, L, H) reset gate."""
    max_err: float = 0.0
    """Largest |h_t - ((1 - z) n + z h_{t-1})| over valid steps and layers."""


def recompute_states(gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> GRUStates:
    """Every layer's h, z, r from the GRU's weights, each layer a fused single-layer GRU; checked.

    x: (B, T, I) batch first, lengths: (B,) in any order. Raises ExtractionCheckError when a
    step breaks the GRU recurrence by more than CHECK_TOL.
    """
    lengths_np = lengths.detach().cpu().numpy().astype(np.int64)
    b, t_max = x.shape[:2]
    n_layers, n_units = gru.num_layers, gru.hidden_size
    with torch.inference_mode(), _full_float32(x.device):
        steps = _Steps.of(lengths_np, t_max, x.device)
        outs = [x.new_empty(steps.rows, n_layers, n_units) for _ in range(3)]  # h, z, r
        resid = _all_layers(gru, x, steps, *outs, fused=None)
        max_err = _check(resid, None, steps, "model", None, CHECK_TOL)
        padded = []
        for o in outs:
            p = x.new_zeros(b * t_max, n_layers, n_units)
            p.index_copy_(0, steps.flat, o)
            padded.append(p.view(b, t_max, n_layers, n_units))
    return GRUStates(*padded, max_err=max_err)


@dataclass(frozen=True)
class _Steps:
    """The valid steps of a padded (B, T) batch, dog by dog: row i of the outputs is step flat[i]."""

    flat: torch.Tensor
    """(rows,) int64 position b * T + t of each valid step, on the device."""
    flat_host: np.ndarray
    """(rows,) the same positions, on the host."""
    flat_tb: torch.Tensor
    """(rows,) int64 position t * B + b of each valid step (time-major tensors, as CPU nn.GRU returns)."""
    first: torch.Tensor
    """(B,) int64 row of each dog's first step (where h_{t-1} = h_0 = 0), on the device."""
    starts: np.ndarray
    """(B,) int64 the same rows, on the host."""
    lengths: np.ndarray
    """(B,) int64 steps of each dog."""

    @property
    def rows(self) -> int:
        return int(self.flat.shape[0])

    @classmethod
    def of(cls, lengths: np.ndarray, t_max: int, device: torch.device) -> _Steps:
        lengths = np.asarray(lengths, dtype=np.int64)
        if len(lengths) and (lengths.min() < 0 or lengths.max() > t_max):
            raise ConfigError(f"extract: lengths {lengths.min()}..{lengths.max()} outside 0..{t_max} padded steps")
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        rows = int(lengths.sum())
        step = np.arange(rows, dtype=np.int64) - np.repeat(starts, lengths)  # (rows,) 0-based step
        dog = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # (rows,) batch position
        flat = dog * t_max + step
        first = starts[lengths > 0]
        return cls(torch.from_numpy(flat).to(device), flat, torch.from_numpy(step * len(lengths) + dog).to(device),
                   torch.from_numpy(first).to(device), starts, lengths)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Valid steps of a padded tensor (batch first, or a transposed time-major view). (B, T, C) -> (rows, C)."""
        b, t_max = t.shape[:2]
        if t.is_contiguous():
            return t.view(b * t_max, -1).index_select(0, self.flat)
        if t.transpose(0, 1).is_contiguous():  # no copy of the padded tensor
            return t.transpose(0, 1).view(b * t_max, -1).index_select(0, self.flat_tb)
        return t.reshape(b * t_max, -1).index_select(0, self.flat)

    def locate(self, row: int) -> tuple[int, int]:
        """(batch position, 0-based step) of output row `row`."""
        d = int(np.searchsorted(self.starts, row, side="right")) - 1  # past any dog without steps
        return d, row - int(self.starts[d])


class _LayerGRU(nn.GRU):
    """A single-layer nn.GRU whose weights are copied in: no random init (it would move torch's RNG)."""

    def reset_parameters(self) -> None:
        pass


def _layer_grus(gru: nn.GRU, n_layers: int) -> list[nn.GRU]:
    """Layers 0..n_layers-1 of `gru` as fused single-layer nn.GRUs with the same weights (copies, flat for cuDNN)."""
    singles = []
    for k in range(n_layers):
        w_ih = getattr(gru, f"weight_ih_l{k}")
        single = _LayerGRU(w_ih.shape[1], gru.hidden_size, 1, bias=gru.bias, batch_first=True, device=w_ih.device,
                           dtype=w_ih.dtype)
        with torch.no_grad():
            for name in single._flat_weights_names:  # weight_ih_l0, weight_hh_l0[, bias_ih_l0, bias_hh_l0]
                getattr(single, name).copy_(getattr(gru, f"{name[:-1]}{k}"))
        singles.append(single.eval())
    return singles


def _all_layers(
    gru: nn.GRU, gin: torch.Tensor, steps: _Steps, out_h: torch.Tensor, out_z: torch.Tensor, out_r: torch.Tensor,
    *, fused: torch.Tensor | None,
) -> torch.Tensor:
    """Every layer's h, z, r at the valid steps into out_h, out_z, out_r ((rows, L, H), any float dtype).

    gin: (B, T, I) what the GRU read. fused: (B, T, H) the model's fused output, taken as the top
    layer's h (None: every layer runs alone). Returns the recurrence residual (L, rows).
    """
    if gru.bidirectional:
        raise ModelError("extract: bidirectional GRUs are not supported; gruviz reads a dog's races forwards only")
    n_layers = gru.num_layers
    resid = gin.new_empty(n_layers, steps.rows)
    singles = _layer_grus(gru, n_layers - 1 if fused is not None else n_layers)
    inp, x_rows = gin, steps.gather(gin)  # (rows, I)
    for k in range(n_layers):
        h_pad = singles[k](inp)[0] if k < len(singles) else fused  # (B, T, H) fused kernels; padded steps unused
        h_rows = steps.gather(h_pad)  # (rows, H)
        _gates(gru, k, x_rows, h_rows, steps.first, out_h[:, k], out_z[:, k], out_r[:, k], resid[k])
        inp, x_rows = h_pad, h_rows
    return resid


def _gates(
    gru: nn.GRU, k: int, x: torch.Tensor, h: torch.Tensor, first: torch.Tensor,
    out_h: torch.Tensor, out_z: torch.Tensor, out_r: torch.Tensor, resid: torch.Tensor,
) -> None:
    """Layer k's gates at every valid step from its input x (rows, I) and states h (rows, H), and
    the recurrence residual |h_t - ((1 - z) n + z h_{t-1})| (rows,); outputs are written in place."""
    rows, n_units = h.shape
    two = 2 * n_units
    cpu = _cpu_maths(h.device)
    w_ih, w_hh = getattr(gru, f"weight_ih_l{k}"), getattr(gru, f"weight_hh_l{k}")  # (3H, I), (3H, H)
    b_ih, b_hh = (getattr(gru, f"bias_ih_l{k}"), getattr(gru, f"bias_hh_l{k}")) if gru.bias else (None, None)
    if cpu:  # tanh(a) = 2 σ(2a) - 1: σ is 3x faster than tanh on CPU, and doubling the n rows is exact
        w_ih, w_hh, b_ih, b_hh = (None if w is None else torch.cat([w[:two], 2 * w[two:]])
                                  for w in (w_ih, w_hh, b_ih, b_hh))
    w_ih, w_hh = w_ih.t(), w_hh.t()  # (I, 3H), (H, 3H)
    h_prev = torch.empty_like(h)  # (rows, H) h_{t-1}, 0 before a dog's first step
    h_prev[1:] = h[:-1]
    h_prev.index_fill_(0, first, 0.0)
    chunk = max(64, CHUNK_BYTES // (3 * n_units * h.element_size())) if cpu else rows
    chunk = max(1, min(chunk, rows))
    gi_buf, gh_buf = h.new_empty(chunk, 3 * n_units), h.new_empty(chunk, 3 * n_units)
    d_buf = h.new_empty(chunk, n_units)
    for a in range(0, rows, chunk):  # row chunks, not steps: every chunk spans many dogs and steps
        c = slice(a, min(a + chunk, rows))
        n = c.stop - a
        gi, gh, d = gi_buf[:n], gh_buf[:n], d_buf[:n]
        _linear(x[c], w_ih, b_ih, gi)  # (n, 3H) W_i* x + b_i*
        _linear(h_prev[c], w_hh, b_hh, gh)  # (n, 3H) W_h* h + b_h*
        rz = gi[:, :two].add_(gh[:, :two]).sigmoid_()
        r, z = rz[:, :n_units], rz[:, n_units:]
        cand = gh[:, two:].mul_(r).add_(gi[:, two:])  # W_in x + b_in + r * (W_hn h + b_hn), doubled on CPU
        cand = cand.sigmoid_().mul_(2.0).sub_(1.0) if cpu else cand.tanh_()  # n
        torch.lerp(cand, h_prev[c], z, out=d).sub_(h[c]).abs_()  # |(1 - z) n + z h_{t-1} - h_t|
        torch.amax(d, 1, out=resid[c])
        out_h[c] = h[c]
        out_z[c] = z
        out_r[c] = r


def _cpu_maths(device: torch.device) -> bool:
    """Whether the gates take the CPU path (cache-sized chunks, tanh through σ) or one chunk (GPUs)."""
    return device.type == "cpu"


def _linear(x: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    if bias is None:
        torch.mm(x, w_t, out=out)
    else:
        torch.addmm(bias, x, w_t, out=out)


def _check(
    resid: torch.Tensor, top: torch.Tensor | None, steps: _Steps, model_id: str, name_of, tol: float,
) -> float:
    """Largest residual; raises ExtractionCheckError above `tol` (NaN too), naming dog, step and layer.

    resid: (L, rows) recurrence residual; top: (rows,) |layer by layer - fused| or None.
    `name_of(batch position)` names a dog (None: its batch position).
    """
    if steps.rows == 0:
        return 0.0
    worst = [resid.amax(1)] + ([top.amax().reshape(1)] if top is not None else [])
    worst_l = torch.cat(worst).tolist()  # one device sync
    if all(v <= tol for v in worst_l):
        return float(max(worst_l))
    bad = next(i for i, v in enumerate(worst_l) if not v <= tol)  # lowest layer first, then the top vs fused
    err = resid[bad] if bad < resid.shape[0] else top
    row = int(torch.nan_to_num(err, nan=float("inf")).argmax())
    d, t = steps.locate(row)
    who = name_of(d) if name_of is not None else f"batch position {d}"
    if bad < resid.shape[0]:
        raise ExtractionCheckError(
            f"extract {model_id}: layer {bad}'s state breaks the GRU recurrence h_t = (1 - z) * n + z * h_(t-1) "
            f"by {worst_l[bad]:.3g} (> {tol:g}) at dog {who}, step {t + 1}; the states are not what this nn.GRU's "
            "weights compute from a zero initial state (the top layer's are the model's fused nn.GRU output, the "
            "layers below rerun from the weights): a modified forward or output, hooks, a non-zero h_0, or "
            "reduced precision such as TF32"
        )
    raise ExtractionCheckError(
        f"extract {model_id}: recomputed GRU state differs from the fused nn.GRU output by {worst_l[bad]:.3g} "
        f"(> {tol:g}) at dog {who}, step {t + 1} (top layer); the module's GRU is not run as a plain nn.GRU "
        "(modified forward, hooks, or input changed between the fused run and the recomputation)"
    )


def check_top_layer(
    h_top: torch.Tensor, fused: torch.Tensor, lengths: torch.Tensor, *, dog_ids: Sequence | None = None,
    model_id: str = "model", tol: float = CHECK_TOL,
) -> float:
    """Max |recomputed - fused| over valid steps; raises ExtractionCheckError above `tol`.

    h_top, fused: (B, T, H); lengths: (B,). `dog_ids` names the batch's dogs in the message.
    """
    t_max = h_top.shape[1]
    steps = _Steps.of(lengths.detach().cpu().numpy(), t_max, h_top.device)
    top = (steps.gather(h_top) - steps.gather(fused[:, :t_max])).abs_().amax(1)  # (rows,)
    name_of = (lambda d: dog_ids[d]) if dog_ids is not None else None
    return _check(top.new_zeros(0, steps.rows), top, steps, model_id, name_of, tol)


@dataclass(frozen=True)
class BatchStates:
    """One model's output for a batch of dogs, flattened to valid rows, dog by dog in batch order."""

    dogs: np.ndarray
    """(B,) int64 dog indices, in the order their rows appear below."""
    lengths: np.ndarray
    """(B,) int64 steps of each dog."""
    h: np.ndarray
    """(rows, L, H) float16 (or the dtype asked for) state after each step."""
    z: np.ndarray
    """(rows, L, H) update gate, as h."""
    r: np.ndarray
    """(rows, L, H) reset gate, as h."""
    score: np.ndarray
    """(rows,) float32 the model's score of each race."""
    max_err: float
    """Largest |h_t - ((1 - z) n + z h_{t-1})| of the check, over every step and layer (the top layer
    is the model's fused output)."""


def extract_batch(
    model: LoadedModel, values: np.ndarray, context: np.ndarray, offsets: np.ndarray, dogs: np.ndarray,
    *, device: torch.device, dog_ids: Sequence | None = None, dtype: torch.dtype = torch.float16,
) -> BatchStates:
    """Scores, states and gates of `dogs` (indices, any order) under one model.

    values: (obs, F), context: (obs, C), offsets: (dog + 1,). Dogs are sorted longest first
    internally and dogs without rows dropped; the result lists them in that order. h, z, r come in
    `dtype`: float16 as stored, or float32 for a caller that summarises them before storing.
    """
    dogs = np.asarray(dogs, dtype=np.int64)
    offsets = np.asarray(offsets)
    lengths = (offsets[dogs + 1] - offsets[dogs]).astype(np.int64)
    order = np.argsort(-lengths, kind="stable")
    order = order[lengths[order] > 0]
    dogs, lengths = dogs[order], lengths[order]
    n_layers, n_units = model.gru.num_layers, model.gru.hidden_size
    if len(dogs) == 0:
        empty = torch.zeros(0, n_layers, n_units, dtype=dtype).numpy()
        return BatchStates(dogs=dogs, lengths=lengths, h=empty, z=empty, r=empty,
                           score=np.zeros(0, np.float32), max_err=0.0)
    b, t_max = len(dogs), int(lengths[0])
    with torch.inference_mode(), _full_float32(device):
        steps = _Steps.of(lengths, t_max, device)
        src = np.repeat(offsets[dogs] - steps.starts, lengths) + np.arange(steps.rows)  # (rows,) input row of each step
        x = torch.from_numpy(_pad(values, src, steps.flat_host, b * t_max).reshape(b, t_max, -1)).to(device)
        ctx = torch.from_numpy(_pad(context, src, steps.flat_host, b * t_max).reshape(b, t_max, -1)).to(device)
        out = model.run(x, ctx)
        gin, fused = out.gru_input, out.gru_output
        if gin.shape[:2] != (b, t_max) or fused.shape[:2] != (b, t_max) or out.scores.shape[:2] != (b, t_max):
            raise ModelError(
                f"extract {model.model_id}: for a (B, T) = ({b}, {t_max}) batch the GRU read {tuple(gin.shape)}, "
                f"returned {tuple(fused.shape)} and the model scored {tuple(out.scores.shape)}; gruviz needs one "
                "GRU step and one score per race, batch first or not"
            )
        h, z, r = (torch.empty(steps.rows, n_layers, n_units, dtype=dtype, device=device) for _ in range(3))
        resid = _all_layers(model.gru, gin, steps, h, z, r, fused=fused)  # top layer: the model's own output
        max_err = _check(resid, None, steps, model.model_id, lambda d: _dog_name(dogs, d, dog_ids), CHECK_TOL)
        score = steps.gather(out.scores[..., None])[:, 0].float()  # (rows,)
        h, z, r, score = (t.cpu().numpy() for t in (h, z, r, score))
    return BatchStates(dogs=dogs, lengths=lengths, h=h, z=z, r=r, score=score, max_err=max_err)


def _dog_name(dogs: np.ndarray, d: int, dog_ids: Sequence | None):
    return dog_ids[int(dogs[d])] if dog_ids is not None else int(dogs[d])


def _pad(rows: np.ndarray, src: np.ndarray, flat: np.ndarray, n: int) -> np.ndarray:
    """Rows src of `rows` (obs, C) at positions flat of a zero (n, C) block."""
    out = np.zeros((n, rows.shape[1]), dtype=rows.dtype)
    out[flat] = rows[src]
    return out


def iter_extract(
    models: Sequence[LoadedModel], values: np.ndarray, context: np.ndarray, offsets: np.ndarray, dogs: np.ndarray,
    *, device: torch.device | str | None = None, batch_size: int = 1024, max_tokens: int | None = None,
    dog_ids: Sequence | None = None, dtype: torch.dtype = torch.float16,
) -> Iterator[tuple[int, BatchStates]]:
    """(seed position, BatchStates) for every length-sorted batch of `dogs` under each model in turn
    (h, z, r in `dtype`, see `extract_batch`).

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
                yield s, extract_batch(model, values, context, offsets, dogs[pos], device=dev, dog_ids=dog_ids,
                                       dtype=dtype)


_TF32_LOCK = threading.Lock()
_tf32_users = 0
_tf32_saved: tuple[bool, bool] = (False, False)


@contextmanager
def _full_float32(dev: torch.device):
    """No TF32 on CUDA while extracting: cuDNN may run the fused GRU in TF32 (10-bit mantissa), which
    would fail the 1e-5 check for reasons unrelated to the model. The flags are global and blocks
    may extract in threads: the first to enter turns TF32 off, the last to leave restores it."""
    global _tf32_users, _tf32_saved
    if dev.type != "cuda":
        yield
        return
    with _TF32_LOCK:
        if _tf32_users == 0:
            _tf32_saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        _tf32_users += 1
    try:
        yield
    finally:
        with _TF32_LOCK:
            _tf32_users -= 1
            if _tf32_users == 0:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = _tf32_saved
