"""Plans beyond one tensor-parallel group: data-parallel replicas on every GPU of a node, pipeline parallel across
identical nodes, and the ``--nodes`` a model needs when one node cannot hold it (issue 15's done-when cases)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from core.errors import InvalidOptionsError
from core.hardware import Gpu, Target, describe_target
from core.plan import Options, Plan, plan, plan_to_dict
from core.sizing import GIB
from tests.unit.test_plan import assert_budgets_hold, codes, gpus, reason, warning
from tests.unit.test_sizing import H100, L4, model_info

A100_40 = describe_target(gpu_preset="a100-40gb", gpu_count=1).gpus[0]


def node(gpu: Gpu, count: int) -> Target:
    """One server as the CLI describes it: no RAM figure, so no CPU fallback competes with vLLM."""
    return replace(gpus(gpu, count), ram_bytes=None)


def _plan(name: str, gpu: Gpu, count: int, **options: object) -> Plan:
    return plan(model=model_info(name), target=node(gpu, count), options=Options(**options))  # type: ignore[arg-type]


# PLANS WITHOUT --nodes


def test_plans_without_nodes_report_one_node_and_pp_1() -> None:
    p = _plan("Llama-3.1-8B-Instruct", H100, 1)
    data = json.loads(json.dumps(plan_to_dict(p)))
    assert (data["nodes"], data["pipeline_parallel_size"], data["data_parallel_size"]) == (1, 1, 1)
    assert data["tensor_parallel_size"] == 1 and data["gpus_per_node"] == 1 and data["idle_gpu_indices"] == []
    assert data["options"]["nodes"] == 1 and data["options"]["data_parallel_size"] is None


# EVERY GPU USED


def test_8b_on_4_l4_uses_all_four_gpus() -> None:
    # The fewest GPUs that hold a useful context (one L4: about 20k tokens), the rest as replicas; the longer
    # context is the fix the context_capped warning offers.
    p = _plan("Llama-3.1-8B-Instruct", L4, 4)
    assert (p.tensor_parallel_size, p.data_parallel_size, p.gpus_per_node) == (1, 4, 4)
    assert p.idle_gpu_indices == ()
    assert 8192 <= p.max_model_len < p.context_length
    assert warning(p, "context_capped").change == {"tensor_parallel_size": 2}
    assert_budgets_hold(p)


def test_8b_on_4_l4_tp_2_asked_gives_two_replicas() -> None:
    p = _plan("Llama-3.1-8B-Instruct", L4, 4, tensor_parallel_size=2)
    assert (p.tensor_parallel_size, p.data_parallel_size) == (2, 2)
    assert [b.index for b in p.per_gpu] == [0, 1, 2, 3]  # every GPU drawn, each with its replica's budget
    assert "2 replicas" in reason(p, "data_parallel")
    assert_budgets_hold(p)


def test_8b_on_4_l4_dp_4_asked_gives_tp_1_replicas() -> None:
    p = _plan("Llama-3.1-8B-Instruct", L4, 4, data_parallel_size=4)
    assert (p.tensor_parallel_size, p.data_parallel_size, p.gpus_per_node) == (1, 4, 4)
    assert p.fits and p.max_model_len < p.context_length  # one L4 holds a shorter context per replica
    assert "as requested" in reason(p, "data_parallel")


def test_a_tp_size_that_does_not_divide_the_gpus_leaves_the_rest_idle() -> None:
    p = _plan("Qwen3-14B", L4, 3)  # 28 GiB of weights: TP 2, and TP 2 × DP 1 leaves the third L4
    assert (p.tensor_parallel_size, p.data_parallel_size) == (2, 1)
    assert p.idle_gpu_indices == (2,)
    assert "1 of the 3 GPUs stays idle" in reason(p, "gpus_idle")
    assert plan_to_dict(p)["idle_gpu_indices"] == [2]


def test_70b_on_8_h100_runs_two_tp_4_replicas() -> None:
    p = _plan("Llama-3.1-70B", H100, 8)
    assert (p.tensor_parallel_size, p.data_parallel_size, p.gpus_per_node) == (4, 2, 8)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"data_parallel_size": 0}, "at least 1"),
        ({"data_parallel_size": 3, "tensor_parallel_size": 2}, "needs 6 GPUs"),
        ({"nodes": 0}, "from 1 to"),
        ({"nodes": 2, "data_parallel_size": 2}, "one node"),
        ({"nodes": 2, "engine": "transformers"}, "need vLLM"),
    ],
)
def test_parallel_options_that_cannot_be_met(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidOptionsError, match=message):
        _plan("Llama-3.1-8B-Instruct", L4, 4, **options)


def test_nodes_on_a_cpu_target_need_vllm() -> None:
    cpu = Target(ram_bytes=64 * GIB, cpu_cores=16)
    with pytest.raises(InvalidOptionsError, match="need vLLM on NVIDIA GPUs"):
        plan(model=model_info("Qwen2.5-0.5B"), target=cpu, options=Options(nodes=2))


def test_engines_without_replicas_say_which_gpus_stay_idle() -> None:
    p = plan(model=model_info("Qwen2.5-0.5B"), target=node(L4, 2), options=Options(engine="transformers"))
    assert p.engine == "transformers" and p.data_parallel_size == 1
    note = next(n for n in p.reasons if n.code == "gpus_idle_single_server")
    assert note.params["idle_gpus"] == [1] and "one copy" in note.text


# MORE THAN ONE NODE


@pytest.mark.parametrize(("gpu", "needed"), [(A100_40, 2), (L4, 3)])
def test_70b_on_one_node_of_4_names_the_nodes_that_fit(gpu: Gpu, needed: int) -> None:
    one = _plan("Llama-3.1-70B", gpu, 4)
    assert not one.fits and one.nodes == 1
    way_out = warning(one, "needs_more_nodes")
    assert way_out.change == {"nodes": needed} and f"--nodes {needed}" in way_out.text
    # the suggested count really fits, with TP 4 within each node and one pipeline stage per node
    applied = _plan("Llama-3.1-70B", gpu, 4, **way_out.change)
    assert applied.fits
    assert (applied.nodes, applied.pipeline_parallel_size, applied.tensor_parallel_size) == (needed, needed, 4)
    # and one node fewer does not
    if needed > 2:
        assert not _plan("Llama-3.1-70B", gpu, 4, nodes=needed - 1).fits


def test_70b_on_2_nodes_of_4_a100_40gb_is_tp_4_by_pp_2() -> None:
    p = _plan("Llama-3.1-70B", A100_40, 4, nodes=2)
    assert p.fits and p.max_model_len == p.context_length
    assert (p.tensor_parallel_size, p.pipeline_parallel_size, p.data_parallel_size, p.nodes) == (4, 2, 1, 2)
    data = plan_to_dict(p)
    assert (data["nodes"], data["pipeline_parallel_size"], data["tensor_parallel_size"]) == (2, 2, 4)
    assert data["gpus_per_node"] == 4
    text = reason(p, "pipeline_parallel")
    assert "80 decoder layers split evenly, 40 per stage" in text
    # each GPU holds its stage's share: half the layers of TP 4 on one node, plus an embedding's quarter
    one_node = _plan("Llama-3.1-70B", A100_40, 4)
    assert p.per_gpu[0].weights_bytes < 0.55 * one_node.per_gpu[0].weights_bytes
    assert_budgets_hold(p)


def test_uneven_layer_split_is_said() -> None:
    p = _plan("Llama-3.1-70B", L4, 4, nodes=3)
    assert p.fits and p.pipeline_parallel_size == 3
    assert "split as 27, 27, 26" in reason(p, "pipeline_parallel")


def test_8b_with_two_nodes_says_one_node_is_enough() -> None:
    p = _plan("Llama-3.1-8B-Instruct", L4, 4, nodes=2)
    assert p.fits and (p.nodes, p.pipeline_parallel_size) == (1, 1)
    enough = warning(p, "nodes_not_needed")
    assert enough.change == {"nodes": 1} and enough.text.startswith("One node is enough")


def test_more_nodes_than_needed_uses_the_fewest() -> None:
    p = _plan("Llama-3.1-70B", A100_40, 4, nodes=4)
    assert p.fits and p.nodes == 2
    assert warning(p, "nodes_not_needed").change == {"nodes": 2}


def test_nothing_fits_gives_the_shortfall_of_the_best_layout() -> None:
    # 70B on 8 × L4: TP 8 holds 16.5 GiB of weights per GPU, not TP 1's 131 GiB
    p = _plan("Llama-3.1-70B", L4, 8)
    assert not p.fits and p.tensor_parallel_size == 8
    text = warning(p, "weights_do_not_fit").text
    assert "16.46 GiB per GPU" in text and "131" not in text
    assert warning(p, "needs_more_nodes").change == {"nodes": 2}


def test_the_cpu_fallback_keeps_the_nodes_way_out() -> None:
    # with RAM for the weights, transformers on the CPU fits; vLLM on two such nodes stays in view
    p = plan(model=model_info("Llama-3.1-70B"), target=gpus(A100_40, 4))
    assert p.engine == "transformers"
    assert warning(p, "needs_more_nodes").change == {"nodes": 2}
    assert "needs_more_nodes" in codes(p)


def test_kv_note_says_each_stage_caches_its_own_layers() -> None:
    p = _plan("Llama-3.1-70B", A100_40, 4, nodes=2)
    kv = next(n for n in p.reasons if n.code == "kv_cache")
    assert kv.params["pp"] == 2 and "at most 40 of 80" in kv.text


# THE CLI


def test_plan_cli_shows_the_layout_and_idle_gpus(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ezrunner_ui.cli import common, main

    monkeypatch.setattr(common.hubs, "inspect", lambda **kwargs: model_info(kwargs["ref"].repo_id.split("/")[-1]))
    assert main(["plan", "hf:org/Llama-3.1-70B", "--gpu-name", "a100-40gb", "--gpus", "4", "--nodes", "2"]) == 0
    assert "TP 4 × PP 2 (2 nodes)" in capsys.readouterr().out
    assert main(["plan", "hf:org/Llama-3.1-8B-Instruct", "--gpu-name", "l4", "--gpus", "4", "--tp", "2"]) == 0
    assert "TP 2 × DP 2" in capsys.readouterr().out
    assert main(["plan", "hf:org/Qwen3-14B", "--gpu-name", "l4", "--gpus", "3"]) == 0
    assert "GPU 2: idle" in capsys.readouterr().out
    assert main(["plan", "hf:org/Llama-3.1-8B-Instruct", "--gpu-name", "l4", "--gpus", "4", "--dp", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["tensor_parallel_size"], data["data_parallel_size"]) == (1, 4)


def test_data_parallel_size_1_still_spans_nodes() -> None:
    p = _plan("Llama-3.1-70B", A100_40, 4, nodes=2, data_parallel_size=1)
    assert p.fits and (p.nodes, p.data_parallel_size) == (2, 1)
    one = _plan("Llama-3.1-70B", A100_40, 4, data_parallel_size=1)
    assert warning(one, "needs_more_nodes").change == {"nodes": 2}
