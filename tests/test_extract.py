"""Extraction invariants on tiny random GRUs: states, gates and the fused-output check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gruviz_core.errors import ConfigError, ExtractionCheckError
from gruviz_core.extract import (
    check_top_layer, choose_device, extract_batch, iter_extract, length_batches, recompute_states,
)
from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU

F, C = 5, 3
CPU = torch.device("cpu")


def make_model(hidden: int = 8, layers: int = 1, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    module = RaceGRU(ModelConfig(F, C, hidden_size=hidden, num_layers=layers, seed=seed))
    return LoadedModel.wrap(module, [f"f{i}" for i in range(F)], [f"c{i}" for i in range(C)], model_id=f"m{seed}")


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
    """Independent float64 numpy GRU for one sequence x (T, I): h, z, r each (T, L, H)."""
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    inp, hs, zs, rs = x.astype(np.float64), [], [], []
    for k in range(gru.num_layers):
        w_ih = getattr(gru, f"weight_ih_l{k}").detach().double().numpy()
        w_hh = getattr(gru, f"weight_hh_l{k}").detach().double().numpy()
        b_ih = getattr(gru, f"bias_ih_l{k}").detach().double().numpy()
        b_hh = getattr(gru, f"bias_hh_l{k}").detach().double().numpy()
        (w_ir, w_iz, w_in), (w_hr, w_hz, w_hn) = np.split(w_ih, 3), np.split(w_hh, 3)
        (b_ir, b_iz, b_in), (b_hr, b_hz, b_hn) = np.split(b_ih, 3), np.split(b_hh, 3)
        h = np.zeros(gru.hidden_size)
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


@pytest.mark.parametrize("layers", [1, 3])
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


def test_padding_changes_nothing():
    # Not bit for bit: the BLAS may take another kernel for another batch shape (7e-9 apart on
    # some CPUs). Scores are float32; h, z, r are float16, where 7e-9 can flip one ulp (<= 4.9e-4).
    model = make_model(layers=2)
    values, context, offsets = make_data([4, 30])
    alone = extract_batch(model, values, context, offsets, np.array([0]), device=CPU)
    padded = extract_batch(model, values, context, offsets, np.array([0, 1]), device=CPU)
    for q in ("h", "z", "r", "score"):
        got, want = getattr(padded, q)[rows_of(padded, 0)], getattr(alone, q)
        atol = 1e-6 if q == "score" else 1e-3
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=0, atol=atol)


def test_multilayer_equals_layer_by_layer():
    model = make_model(hidden=6, layers=3)
    values, _, offsets = make_data([9, 4, 2])
    x, lengths = torch.zeros(3, 9, F), torch.tensor([9, 4, 2])
    for d in range(3):
        x[d, : lengths[d]] = torch.from_numpy(values[offsets[d] : offsets[d + 1]])
    with torch.inference_mode():
        states = recompute_states(model.gru, x, lengths)
        inp = x
        for k in range(3):
            single = nn.GRU(inp.shape[-1], 6, batch_first=True)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(single, f"{name}_l0").copy_(getattr(model.gru, f"{name}_l{k}"))
            inp, _ = single(inp)
            for d in range(3):
                n = int(lengths[d])
                torch.testing.assert_close(states.h[d, :n, k], inp[d, :n], atol=1e-6, rtol=0)


def test_gates_match_independent_reference():
    model = make_model(hidden=5, layers=2, seed=3)
    values, context, offsets = make_data([6, 11])
    bs = extract_batch(model, values, context, offsets, np.array([0, 1]), device=CPU)
    for d in range(2):
        h, z, r = reference_gru(model.gru, values[offsets[d] : offsets[d + 1]])
        sl = rows_of(bs, d)
        for got, want in ((bs.h, h), (bs.z, z), (bs.r, r)):
            np.testing.assert_allclose(got[sl].astype(np.float64), want, atol=1e-3)  # float16 storage


def test_scores_are_the_models():
    model = make_model(layers=1)
    values, context, offsets = make_data([5, 2])
    bs = extract_batch(model, values, context, offsets, np.array([0, 1]), device=CPU)
    with torch.inference_mode():
        want = model.module(torch.from_numpy(values[None, :5]), torch.from_numpy(context[None, :5]))[0]
    np.testing.assert_allclose(bs.score[rows_of(bs, 0)], want.numpy(), atol=1e-6)


def test_check_fires_when_captured_output_is_tampered():
    model = make_model(layers=2)
    values, context, offsets = make_data([3, 8, 5])
    # A hook registered before LoadedModel's own changes what the GRU returns, as a patched forward would.
    handle = model.gru.register_forward_hook(lambda _m, _a, out: (out[0] + 1e-3 * (out[0] > 0.1), out[1]))
    try:
        with pytest.raises(ExtractionCheckError, match=r"by 0\.001.*dog d1, step \d+"):
            extract_batch(model, values, context, offsets, np.array([0, 1, 2]), device=CPU,
                          dog_ids=["d0", "d1", "d2"])
    finally:
        handle.remove()


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


def test_choose_device():
    assert choose_device("cpu").type == "cpu"
    assert choose_device(None).type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            choose_device("cuda")
