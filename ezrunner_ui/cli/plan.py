"""`ezrunner plan`: engine, tensor parallelism, context length and memory per GPU."""

from __future__ import annotations

import argparse

from core.plan import plan_to_dict
from ezrunner_ui.cli.common import add_plan_args, gib, make_plan, print_json

NAME = "plan"
HELP = "engine, tensor parallelism, context length and memory per GPU"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_plan_args(p)


def run(args: argparse.Namespace) -> None:
    result = make_plan(args)
    if args.json:
        print_json(plan_to_dict(result))
        return
    print(f"{result.model.repo_id} on {result.target.label}")
    parallel = f"TP {result.tensor_parallel_size}"
    if result.pipeline_parallel_size > 1:
        parallel += f" × PP {result.pipeline_parallel_size} ({result.nodes} nodes)"
    if result.data_parallel_size > 1:
        parallel += f" × DP {result.data_parallel_size}"
    print(f"  engine {result.engine} ({result.base_image}), {parallel}, "
          f"max_model_len {result.max_model_len}, dtype {result.dtype}, fits: {'yes' if result.fits else 'NO'}")
    if result.max_concurrency is not None:
        # the pool as vLLM logs it at start-up ("GPU KV cache size", "Maximum concurrency for N tokens")
        print(f"  KV cache: {result.kv_cache_tokens:,} tokens; maximum concurrency {result.max_concurrency:.2f}x "
              f"at max_model_len {result.max_model_len:,}")
    for g in result.per_gpu:
        where = f"GPU {g.index}" if g.index is not None else "RAM"
        print(f"  {where}: weights {gib(g.weights_bytes)} + KV {gib(g.kv_cache_bytes)} + overhead "
              f"{gib(g.overhead_bytes)} of {gib(g.capacity_bytes)} usable")
    for index in result.idle_gpu_indices:
        print(f"  GPU {index}: idle")
    for r in result.reasons:
        print(f"  why: {r.text}")
    for w in result.warnings:
        print(f"  warning: {w.text}")
