"""One Adam step over what fine-tuning trains, side by side: torch's per-tensor loop (its CPU default), its foreach
implementation, and the fused kernel that planlm's optimizer uses (planlm.train.trainer.adam).

    python bench/adam.py --json                                  # SmolLM2-135M's adapters + the paper-size planner
    python bench/adam.py --layers 12 --hidden 768 --json         # GPT-2 small's

The trained parameters are real planlm modules, built from shapes only (no LM is loaded): the action adapters of
an LM with ``--layers`` layers and attention width ``--hidden`` (every layer but the first two, gated) and the
paper's planner for ``--num_actions`` actions of ``--action_dim``-wide embeddings (the defaults: K = 1024 and
768, the paper's and bench/overhead.py's sizes), every parameter with a random gradient. Prints the milliseconds
per step (median of ``--steps``, after one warm-up step that allocates the state) and each against the loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

IMPLEMENTATIONS = ("loop", "foreach", "fused (planlm)")


def trained_parameters(layers: int, hidden: int, num_actions: int, action_dim: int, planner: bool) -> list:
    import torch

    from planlm.models.adapters import ActionAdapters
    from planlm.models.planner import Planner, PlannerConfig

    modules = [ActionAdapters("llama", layers, hidden, num_actions, action_dim, gate=True)]
    if planner:
        modules.append(Planner(PlannerConfig(num_actions=num_actions, encoder_dim=action_dim)))
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def optimizer(kind: str, params: list, lr: float):
    import torch

    from planlm.train.trainer import adam

    if kind == "fused (planlm)":
        return adam(params, lr)
    return torch.optim.Adam(params, lr=lr, foreach=kind == "foreach")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=30, help="the LM's layers (SmolLM2-135M: 30)")
    ap.add_argument("--hidden", type=int, default=576, help="the attention output projection's input width")
    ap.add_argument("--num_actions", type=int, default=1024, help="K")
    ap.add_argument("--action_dim", type=int, default=768, help="the sentence embeddings' width")
    ap.add_argument("--no_planner", action="store_true", help="the adapters only (a frozen planner, or Fixed)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per implementation")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if min(args.layers - 2, args.hidden, args.num_actions, args.action_dim, args.steps) < 1:
        ap.error("--layers must be >= 3 and --hidden, --num_actions, --action_dim, --steps >= 1")
    import torch

    torch.manual_seed(0)
    params = trained_parameters(args.layers, args.hidden, args.num_actions, args.action_dim, not args.no_planner)
    optimizers = {kind: optimizer(kind, [p.detach().clone().requires_grad_() for p in params], 1e-4)
                  for kind in IMPLEMENTATIONS}
    for opt in optimizers.values():
        for p, q in zip((p for g in opt.param_groups for p in g["params"]), params):
            p.grad = q.grad.clone()
        opt.step()  # warm-up: allocates the moments
    times = {kind: [] for kind in IMPLEMENTATIONS}
    for i in range(args.steps):
        for kind in IMPLEMENTATIONS[i % 3:] + IMPLEMENTATIONS[: i % 3]:  # round-robin, a different first each step
            started = time.perf_counter()
            optimizers[kind].step()
            times[kind].append(time.perf_counter() - started)
    ms = {kind: statistics.median(t) * 1000 for kind, t in times.items()}
    result = {
        "threads": torch.get_num_threads(),
        "parameters_M": round(sum(p.numel() for p in params) / 1e6, 2),
        "tensors": len(params),
        "ms_per_step": {k: round(v, 1) for k, v in ms.items()},
        "x loop": {k: round(v / ms["loop"], 3) for k, v in ms.items()},
        "timed_steps": args.steps,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['parameters_M']}M parameters in {result['tensors']} tensors, {result['threads']} threads")
        for kind in IMPLEMENTATIONS:
            print(f"{kind:>15}: {ms[kind]:8.1f} ms/step  {ms[kind] / ms['loop']:.3f}x the loop")
    return result


if __name__ == "__main__":
    main()
