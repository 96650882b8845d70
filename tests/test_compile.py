"""`--trainer.compile true`: the planned LM's LM (with the adapters' hooks) and planner under torch.compile give the
same losses and gradients as eager mode, through the training loop's own step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import synthetic_prepared, tiny_tokenizer

from planlm.data.planner_inputs import PlannerInputs
from planlm.data.windows import WindowDataset
from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
from planlm.models.planner import Planner, PlannerConfig
from planlm.train.loop import PlannedLMModule
from planlm.train.trainer import OptimConfig
from planlm.train.recipe import RecipeConfig


@pytest.mark.slow  # inductor compiles C++ kernels: minutes on a shared 2-core CPU
def test_compiled_step_matches_eager(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    corpus = synthetic_prepared(tmp_path / "prep", n_articles=8)
    tok = tiny_tokenizer()
    ds = WindowDataset.from_corpus(corpus, tok, "train", 24, 23)
    pcfg = PlannerConfig(num_actions=corpus.num_actions, encoder_dim=corpus.embedding_dim, ff=32, context_sentences=3)
    collate = ds.collate_fn(PlannerInputs.from_config(corpus, pcfg), pad_token_id=0)
    batches = [collate([ds[i] for i in range(b, b + 3)]) for b in (0, 3)]  # two batches, different shapes

    def fresh_model():  # built anew per mode: a deepcopy would keep hooks bound to the original adapters
        torch.manual_seed(0)
        lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        planner = Planner(pcfg, centroids=torch.from_numpy(corpus.centroids))
        return PlannedLM(lm, PlannedLMConfig(num_actions=corpus.num_actions, action_dim=corpus.embedding_dim,
                                             layers=[1], selection="soft"),
                         centroids=torch.from_numpy(corpus.centroids), planner=planner)

    recipe = RecipeConfig(selection="soft", planner_unfreeze="immediate", nap_weight=0.5)
    results = {}
    for mode in ("eager", "compiled"):
        module = PlannedLMModule(fresh_model(), recipe, OptimConfig(), total_steps=10, compile=mode == "compiled")
        out = []
        for batch in batches:
            losses = module.step_losses(batch, train=True)
            module.model.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
            out.append((losses["loss"].detach(), grads))
        results[mode] = out
    for (loss_e, grads_e), (loss_c, grads_c) in zip(results["eager"], results["compiled"]):
        assert torch.allclose(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        assert grads_e.keys() == grads_c.keys()
        assert any(k.startswith("planner.") for k in grads_e) and any(k.startswith("adapters.") for k in grads_e)
        for k in grads_e:
            np.testing.assert_allclose(grads_c[k].numpy(), grads_e[k].numpy(), rtol=1e-4, atol=1e-6, err_msg=k)
