"""Checkpoint size of a fine-tuning run at GPT-2 small's shape: the whole module (what checkpoints held before) vs
the trainable state only (adapters, planner, optimizer, RNG: what `planlm finetune` checkpoints hold now).

    python bench/checkpoint_size.py [--json]

A randomly initialised GPT-2 small (12 x 768, 124 M parameters; no download), K = 1024 action adapters on layers
2..11 and the paper's planner, one soft-selection optimizer step (so Adam's moments exist), then the checkpoint dict
the loop's ``on_save_checkpoint`` hook leaves, saved with ``torch.save`` (as Lightning does) both ways.
"""

from __future__ import annotations

import argparse
import io
import json

import torch


def saved_bytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from transformers import GPT2Config, GPT2LMHeadModel

    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
    from planlm.models.planner import Planner, PlannerConfig
    from planlm.train.loop import PlannedLMModule
    from planlm.train.recipe import RecipeConfig
    from planlm.train.trainer import OptimConfig

    torch.manual_seed(0)
    K, d = 1024, 768
    centroids = torch.randn(K, d)
    lm = GPT2LMHeadModel(GPT2Config())
    planner = Planner(PlannerConfig(num_actions=K, encoder_dim=d), centroids)
    recipe = RecipeConfig(selection="soft", planner_unfreeze="immediate")
    model = PlannedLM(lm, PlannedLMConfig(num_actions=K, action_dim=d, selection="soft"), centroids=centroids,
                      planner=planner)
    module = PlannedLMModule(model, recipe, OptimConfig(), total_steps=10)
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, lm.config.vocab_size, (2, 32))
    out = model(ids, labels=ids, token_slot=torch.zeros_like(ids), planner_logits=torch.randn(1, K))
    out.loss.backward()
    opt.step()

    full = {"state_dict": module.state_dict(), "optimizer_states": [opt.state_dict()]}
    trainable = {"state_dict": module.state_dict(), "optimizer_states": [opt.state_dict()]}
    module.on_save_checkpoint(trainable)
    module.on_save_checkpoint(full)
    full["state_dict"] = module.state_dict()  # what the hook left in before: every tensor of the module
    before, after = saved_bytes(full), saved_bytes(trainable)
    result = {"lm_parameters": sum(p.numel() for p in lm.parameters()),
              "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
              "checkpoint_mb_before": round(before / 2**20, 1), "checkpoint_mb_after": round(after / 2**20, 1),
              "ratio": round(after / before, 3)}
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
