"""Extraction on a CUDA GPU (cuDNN's fused GRU) agrees with the CPU. Skipped, saying so, without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gruviz_core.extract import iter_extract
from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")


def test_cuda_extraction_matches_cpu_and_passes_the_check():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=300)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.standard_normal((offsets[-1], 6)).astype(np.float32)
    context = rng.standard_normal((offsets[-1], 3)).astype(np.float32)
    runs = {}
    for dev in ("cpu", "cuda"):
        model = LoadedModel.wrap(RaceGRU(ModelConfig(6, 3, 32, num_layers=2)), list("abcdef"), list("xyz"))
        runs[dev] = model
    runs["cuda"].module.load_state_dict(runs["cpu"].module.state_dict())
    out = {}
    for dev, model in runs.items():
        batches = list(iter_extract([model], values, context, offsets, np.arange(len(lengths)), device=dev))
        assert max(bs.max_err for _, bs in batches) <= 1e-5  # the check ran against cuDNN's output
        order = np.concatenate([bs.dogs for _, bs in batches])
        out[dev] = (order, np.concatenate([bs.h for _, bs in batches]).astype(np.float32))
    np.testing.assert_array_equal(out["cpu"][0], out["cuda"][0])
    np.testing.assert_allclose(out["cpu"][1], out["cuda"][1], atol=2e-3)  # float16 storage
