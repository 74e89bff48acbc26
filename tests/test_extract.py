"""Extraction invariants on tiny random GRUs: states, gates and the check (recurrence and fused output)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gruviz_core.extract as extract_mod
from gruviz_core.byo import wrap_module
from gruviz_core.errors import ConfigError, ExtractionCheckError
from gruviz_core.extract import (
    CHECK_TOL,
    check_top_layer,
    choose_device,
    extract_batch,
    iter_extract,
    length_batches,
    recompute_states,
)
from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU

F, C = 5, 3
CPU = torch.device("cpu")
LAYERS = [1, 2, 3]


def make_model(hidden: int = 8, layers: int = 1, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    module = RaceGRU(ModelConfig(F, C, hidden_size=hidden, num_layers=layers, seed=seed))
    return LoadedModel.wrap(module, [f"f{i}" for i in range(F)], [f"c{i}" for i in range(C)], model_id=f"m{seed}")


class ProjectedGRU(nn.Module):
    """A registered (BYO) model unlike RaceGRU: a projection before a time-major, bias-free GRU."""

    def __init__(self, hidden: int = 6, layers: int = 2):
        super().__init__()
        self.proj = nn.Linear(F, F)  # the GRU still reads F features (the BYO contract), not x itself
        self.rnn = nn.GRU(F, hidden, layers, bias=False)  # batch_first=False
        self.out = nn.Linear(hidden + C, 1)

    def forward(self, x, ctx):
        h, _ = self.rnn(torch.tanh(self.proj(x)).transpose(0, 1))  # (T, B, H)
        return self.out(torch.cat([h.transpose(0, 1), ctx], -1)).squeeze(-1)


def make_data(lengths, seed: int = 0):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.normal(size=(offsets[-1], F)).astype(np.float32)
    context = rng.normal(size=(offsets[-1], C)).astype(np.float32)
    return values, context, offsets


def rows_of(bs, d):
    """Rows of dog d inside a BatchStates (dogs are listed longest first)."""
    i = int(np.flatnonzero(bs.dogs == d)[0])
    a = int(bs.lengths[:i].sum())
    return slice(a, a + int(bs.lengths[i]))


def reference_gru(gru: nn.GRU, x: np.ndarray):
    """Independent float64 numpy GRU, one step at a time, for one sequence x (T, I): h, z, r each (T, L, H)."""
    def sig(v):
        return 1.0 / (1.0 + np.exp(-v))

    def param(name, k, rows):
        p = getattr(gru, f"{name}_l{k}", None)
        return np.zeros(rows) if p is None else p.detach().double().numpy()

    inp, hs, zs, rs = x.astype(np.float64), [], [], []
    n_units = gru.hidden_size
    for k in range(gru.num_layers):
        w_ih, w_hh = param("weight_ih", k, None), param("weight_hh", k, None)
        b_ih, b_hh = param("bias_ih", k, 3 * n_units), param("bias_hh", k, 3 * n_units)
        (w_ir, w_iz, w_in), (w_hr, w_hz, w_hn) = np.split(w_ih, 3), np.split(w_hh, 3)
        (b_ir, b_iz, b_in), (b_hr, b_hz, b_hn) = np.split(b_ih, 3), np.split(b_hh, 3)
        h = np.zeros(n_units)
        out_h, out_z, out_r = [], [], []
        for xt in inp:
            r = sig(w_ir @ xt + b_ir + w_hr @ h + b_hr)
            z = sig(w_iz @ xt + b_iz + w_hz @ h + b_hz)
            n = np.tanh(w_in @ xt + b_in + r * (w_hn @ h + b_hn))
            h = (1 - z) * n + z * h
            out_h.append(h), out_z.append(z), out_r.append(r)
        hs.append(np.array(out_h)), zs.append(np.array(out_z)), rs.append(np.array(out_r))
        inp = np.array(out_h)
    return tuple(np.stack(a, axis=1) for a in (hs, zs, rs))


@pytest.mark.parametrize("layers", LAYERS)
def test_last_step_equals_h_n(layers):
    lengths = [7, 1, 12, 3, 12, 5]
    model = make_model(layers=layers)
    values, context, offsets = make_data(lengths)
    (_, bs), = list(iter_extract([model], values, context, offsets, np.arange(len(lengths)), device="cpu"))
    for d in range(len(lengths)):
        x = torch.from_numpy(values[offsets[d] : offsets[d + 1]])[None]
        with torch.inference_mode():
            _, h_n = model.gru(x)  # (L, 1, H)
        last = bs.h[rows_of(bs, d)][-1].astype(np.float32)  # (L, H)
        np.testing.assert_allclose(last, h_n[:, 0].numpy(), atol=1e-3)  # float16 storage


@pytest.mark.parametrize("layers", LAYERS)
def test_outputs_are_contiguous_float16_rows(layers):
    model = make_model(hidden=7, layers=layers)
    values, context, offsets = make_data([4, 0, 9, 2])
    bs = extract_batch(model, values, context, offsets, np.array([0, 1, 2, 3]), device=CPU)
    assert bs.dogs.tolist() == [2, 0, 3] and bs.lengths.tolist() == [9, 4, 2]  # longest first, no empty dog
    for q in ("h", "z", "r"):
        a = getattr(bs, q)
        assert a.dtype == np.float16 and a.shape == (15, layers, 7) and a.flags.c_contiguous
    assert bs.score.dtype == np.float32 and bs.score.shape == (15,)
    assert 0.0 <= bs.max_err <= CHECK_TOL


@pytest.mark.parametrize("layers", LAYERS)
def test_padding_changes_nothing(layers):
    # Not bit for bit: the BLAS may take another kernel for another batch shape (7e-9 apart on
    # some CPUs). Scores are float32; h, z, r are float16, where 7e-9 can flip one ulp (<= 4.9e-4).
    model = make_model(layers=layers)
    values, context, offsets = make_data([4, 30, 17])
    alone = extract_batch(model, values, context, offsets, np.array([0]), device=CPU)
    padded = extract_batch(model, values, context, offsets, np.array([0, 1, 2]), device=CPU)
    for q in ("h", "z", "r", "score"):
        got, want = getattr(padded, q)[rows_of(padded, 0)], getattr(alone, q)
        atol = 1e-6 if q == "score" else 1e-3
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=0, atol=atol)


def test_multilayer_equals_layer_by_layer_and_draws_no_rng():
    model = make_model(hidden=6, layers=3)
    values, _, offsets = make_data([9, 4, 2])
    x, lengths = torch.zeros(3, 9, F), torch.tensor([2, 9, 4])  # any order
    for d, n in enumerate(lengths.tolist()):
        x[d, :n] = torch.from_numpy(values[:n])
    torch.manual_seed(7)
    want_rng = torch.rand(1)
    torch.manual_seed(7)
    with torch.inference_mode():
        states = recompute_states(model.gru, x, lengths)
        assert torch.rand(1) == want_rng  # the single-layer GRUs are built without drawing from torch's RNG
        inp = x
        for k in range(3):
            single = nn.GRU(inp.shape[-1], 6, batch_first=True)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(single, f"{name}_l0").copy_(getattr(model.gru, f"{name}_l{k}"))
            inp, _ = single(inp)
            for d in range(3):
                n = int(lengths[d])
                torch.testing.assert_close(states.h[d, :n, k], inp[d, :n], atol=1e-6, rtol=0)
                assert not states.h[d, n:].any()  # padded steps are 0
    assert states.max_err <= CHECK_TOL


@pytest.mark.parametrize("layers", LAYERS)
def test_gates_match_independent_reference(layers):
    model = make_model(hidden=5, layers=layers, seed=3)
    values, context, offsets = make_data([6, 11, 1])
    bs = extract_batch(model, values, context, offsets, np.array([0, 1, 2]), device=CPU)
    for d in range(3):
        h, z, r = reference_gru(model.gru, values[offsets[d] : offsets[d + 1]])
        sl = rows_of(bs, d)
        for got, want in ((bs.h, h), (bs.z, z), (bs.r, r)):
            np.testing.assert_allclose(got[sl].astype(np.float64), want, atol=1e-3)  # float16 storage


def test_gpu_path_of_the_gates_on_cpu(monkeypatch):
    # The GPU path (one chunk, tanh) runs here too, so a machine without a GPU still tests it.
    monkeypatch.setattr(extract_mod, "_cpu_maths", lambda _device: False)
    model = make_model(hidden=5, layers=2, seed=4)
    values, context, offsets = make_data([6, 11, 1])
    bs = extract_batch(model, values, context, offsets, np.array([0, 1, 2]), device=CPU)
    assert bs.max_err <= CHECK_TOL
    for d in range(3):
        h, z, r = reference_gru(model.gru, values[offsets[d] : offsets[d + 1]])
        for got, want in ((bs.h, h), (bs.z, z), (bs.r, r)):
            np.testing.assert_allclose(got[rows_of(bs, d)].astype(np.float64), want, atol=1e-3)


def test_chunks_do_not_change_the_result(monkeypatch):
    model = make_model(hidden=6, layers=2, seed=2)
    values, context, offsets = make_data([40, 33, 7, 1, 25], seed=3)
    whole = extract_batch(model, values, context, offsets, np.arange(5), device=CPU)
    monkeypatch.setattr(extract_mod, "CHUNK_BYTES", 1)  # 64-row chunks, crossing dogs mid-way
    chunked = extract_batch(model, values, context, offsets, np.arange(5), device=CPU)
    for q in ("h", "z", "r", "score"):
        np.testing.assert_allclose(getattr(chunked, q).astype(np.float32), getattr(whole, q).astype(np.float32),
                                   rtol=0, atol=1e-3)


def test_registered_model_time_major_bias_free_projected_input():
    torch.manual_seed(5)
    module = ProjectedGRU(hidden=6, layers=2)
    model = wrap_module(module, [f"f{i}" for i in range(F)], [f"c{i}" for i in range(C)], model_id="byo")
    values, context, offsets = make_data([5, 8, 3], seed=2)
    bs = extract_batch(model, values, context, offsets, np.array([0, 1, 2]), device=CPU, dog_ids=["a", "b", "c"])
    assert bs.max_err <= CHECK_TOL
    for d in range(3):
        with torch.inference_mode():
            gin = torch.tanh(module.proj(torch.from_numpy(values[offsets[d] : offsets[d + 1]]))).numpy()
            want_score = module(torch.from_numpy(values[None, offsets[d] : offsets[d + 1]]),
                                torch.from_numpy(context[None, offsets[d] : offsets[d + 1]]))[0].numpy()
        h, z, r = reference_gru(module.rnn, gin)
        sl = rows_of(bs, d)
        for got, want in ((bs.h, h), (bs.z, z), (bs.r, r)):
            np.testing.assert_allclose(got[sl].astype(np.float64), want, atol=1e-3)
        np.testing.assert_allclose(bs.score[sl], want_score, atol=1e-6)


def test_scores_are_the_models():
    model = make_model(layers=1)
    values, context, offsets = make_data([5, 2])
    bs = extract_batch(model, values, context, offsets, np.array([0, 1]), device=CPU)
    with torch.inference_mode():
        want = model.module(torch.from_numpy(values[None, :5]), torch.from_numpy(context[None, :5]))[0]
    np.testing.assert_allclose(bs.score[rows_of(bs, 0)], want.numpy(), atol=1e-6)


def _tamper_hook(pos: int, step: int, value):
    """A forward hook that corrupts one unit of the GRU's output at batch position `pos`, step `step`."""
    def hook(_m, _args, out):
        h = out[0].clone()  # (B, T, H) batch first
        h[pos, step, 0] = value(h[pos, step, 0])
        return h, out[1]
    return hook


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("corrupt", [lambda v: v + 1e-3, lambda v: v * float("nan")], ids=["plus-1e-3", "nan"])
def test_check_fires_when_captured_output_is_tampered(layers, corrupt):
    model = make_model(layers=layers)
    values, context, offsets = make_data([3, 8, 5])  # batch order d1 (8 steps), d2 (5), d0 (3)
    # A hook registered before LoadedModel's own changes what the GRU returns, as a patched forward would.
    # The top layer's states are the fused output; at the corrupted step they break the recurrence on the
    # layer below (rerun layer by layer from the weights).
    handle = model.gru.register_forward_hook(_tamper_hook(pos=1, step=2, value=corrupt))
    try:
        with pytest.raises(ExtractionCheckError,
                           match=rf"layer {layers - 1}'s state breaks .* by (0\.001|nan) \(.*dog d2, step 3\b"):
            extract_batch(model, values, context, offsets, np.array([0, 1, 2]), device=CPU,
                          dog_ids=["d0", "d1", "d2"])
    finally:
        handle.remove()
    bs = extract_batch(model, values, context, offsets, np.array([0, 1, 2]), device=CPU)  # hook gone: passes
    assert bs.max_err <= CHECK_TOL


def test_check_fires_on_a_non_zero_initial_state():
    class WarmStart(RaceGRU):
        def forward(self, x, ctx):
            h, _ = self.gru(x, torch.full((self.cfg.num_layers, x.shape[0], self.cfg.hidden_size), 0.5))
            return self.head(torch.cat([h, ctx], -1)).squeeze(-1)

    torch.manual_seed(0)
    model = LoadedModel.wrap(WarmStart(ModelConfig(F, C, hidden_size=8)), [f"f{i}" for i in range(F)],
                             [f"c{i}" for i in range(C)], model_id="warm")
    values, context, offsets = make_data([4, 6])
    with pytest.raises(ExtractionCheckError, match=r"layer 0's state breaks .* step 1\b"):
        extract_batch(model, values, context, offsets, np.array([0, 1]), device=CPU)


def test_check_fires_on_tampered_weights():
    model = make_model(layers=1)
    x = torch.randn(2, 4, F)
    lengths = torch.tensor([4, 2])
    with torch.inference_mode():
        fused, _ = model.gru(x)
        model.gru.weight_hh_l0.add_(1e-2)
        states = recompute_states(model.gru, x, lengths)
        with pytest.raises(ExtractionCheckError, match="batch position"):
            check_top_layer(states.h[:, :, -1], fused, lengths)


def test_length_batches_cover_all_sorted_and_bounded():
    lengths = np.array([1, 150, 3, 12, 12, 40, 2, 0])
    batches = length_batches(lengths, batch_size=3, max_tokens=100)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert list(lengths[flat]) == sorted(lengths, reverse=True)
    assert all(len(b) <= 3 and (len(b) == 1 or len(b) * lengths[b].max() <= 100) for b in batches)
    with pytest.raises(ConfigError):
        length_batches(lengths, batch_size=0)


def test_tf32_off_while_any_cuda_extraction_runs():
    # Only flags: runs without a GPU. Blocks extract in threads; one finishing must not turn TF32
    # back on under another that is still running.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)  # noqa: E731
    cuda = torch.device("cuda")
    try:
        first, second = extract_mod._full_float32(cuda), extract_mod._full_float32(cuda)
        first.__enter__()
        second.__enter__()
        assert flags() == (False, False)
        first.__exit__(None, None, None)  # the other extraction still runs
        assert flags() == (False, False)
        second.__exit__(None, None, None)
        assert flags() == (True, True)
        with extract_mod._full_float32(CPU):
            assert flags() == (True, True)  # CPU extraction leaves them alone
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_choose_device():
    assert choose_device("cpu").type == "cpu"
    assert choose_device(None).type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            choose_device("cuda")
