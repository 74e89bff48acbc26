"""Extraction on a CUDA GPU (cuDNN's fused GRU, cuBLAS gates) agrees with the CPU. Skipped, saying so, without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gruviz_core.errors import ExtractionCheckError
from gruviz_core.extract import CHECK_TOL, extract_batch, iter_extract
from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")


def _inputs(n_dogs: int = 300):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=n_dogs)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.standard_normal((offsets[-1], 6)).astype(np.float32)
    context = rng.standard_normal((offsets[-1], 3)).astype(np.float32)
    return values, context, offsets


def _model(layers: int) -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel.wrap(RaceGRU(ModelConfig(6, 3, 32, num_layers=layers)), list("abcdef"), list("xyz"))


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_cuda_extraction_matches_cpu_and_passes_the_check(layers):
    values, context, offsets = _inputs()
    runs = {"cpu": _model(layers), "cuda": _model(layers)}
    runs["cuda"].module.load_state_dict(runs["cpu"].module.state_dict())
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # extraction must turn them off
    try:
        out = {}
        for dev, model in runs.items():
            batches = list(iter_extract([model], values, context, offsets, np.arange(len(offsets) - 1), device=dev))
            assert max(bs.max_err for _, bs in batches) <= CHECK_TOL  # every step, top layer = cuDNN's output
            out[dev] = {q: np.concatenate([getattr(bs, q) for _, bs in batches])
                        for q in ("dogs", "h", "z", "r", "score")}
            assert out[dev]["h"].dtype == np.float16 and out[dev]["score"].dtype == np.float32
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)  # restored
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    np.testing.assert_array_equal(out["cpu"]["dogs"], out["cuda"]["dogs"])
    for q in ("h", "z", "r"):
        np.testing.assert_allclose(out["cpu"][q].astype(np.float32), out["cuda"][q].astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(out["cpu"]["score"], out["cuda"]["score"], atol=1e-4)


def test_cuda_check_fires_on_a_tampered_output():
    values, context, offsets = _inputs(20)
    model = _model(2)
    model.module.cuda()

    def hook(_m, _args, out):
        h = out[0].clone()
        h[0, 1, 0] += 1e-3
        return h, out[1]

    handle = model.gru.register_forward_hook(hook)
    try:
        with pytest.raises(ExtractionCheckError, match=r"layer 1's state breaks .* step 2\b"):
            extract_batch(model, values, context, offsets, np.arange(20), device=torch.device("cuda"))
    finally:
        handle.remove()
