"""Models run from several threads at once (the nightly flow's block tasks are threads)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU


def test_one_model_run_from_many_threads_captures_each_threads_own_tensors():
    torch.manual_seed(0)
    model = LoadedModel.wrap(RaceGRU(ModelConfig(4, 2, 8)), list("abcd"), list("xy"))
    batches = [(torch.randn(b, t, 4), torch.randn(b, t, 2)) for b, t in [(3, 5), (7, 2), (2, 9), (5, 5)] * 8]
    with torch.inference_mode():
        serial = [model.run(x, c) for x, c in batches]
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(lambda xc: model.run(*xc), batches))
    for (x, _), s, p in zip(batches, serial, parallel):
        assert p.gru_input.shape == x.shape
        torch.testing.assert_close(p.gru_input, x)
        torch.testing.assert_close(p.gru_output, s.gru_output)
        torch.testing.assert_close(p.scores, s.scores)
