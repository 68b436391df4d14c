"""Profiles inside the artifact: the neighbouring targets one image can serve, and the choice among them at start.

At pack time ``with_neighbours`` plans the model again, with the same engine and base image, for the targets
near the one the user described: the same GPU at fewer or more GPUs, the project's GPU presets of the same or
the next smaller memory size, the targets given with ``--also-for``. Every plan that fits and packs the same
files becomes one profile of the run spec (``profiled_run_spec``), with the facts (``core.runspec.Needs``)
that judge fit at start. The user's plan stays the default.

At start one script decides: ``selection_script`` renders a POSIX ``sh`` + ``awk`` program from the run spec
(the llama.cpp images have no python3). It reads the GPUs from ``nvidia-smi`` (none: the CPU), sorts the
profiles into runnable, runnable with a shorter context and incompatible (with the reason), and picks the best
that fits, or refuses naming the closest. The image keeps it at ``core.runspec.SELECT_SCRIPT_PATH`` and its
ENTRYPOINT runs it; ``load.sh`` carries the same text, so both always pick the same; ``ezrunner profiles`` runs
it too, with the workstation's (or a described) target in place of ``nvidia-smi``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from core.engines import engine_for
from core.engines.cuda import CUDA_MIN_DRIVER
from core.engines.shared import MAX_MODEL_LEN_MULTIPLE, MIN_SERVABLE_CONTEXT
from core.engines.versions import (
    LLAMA_CPP_CUDA_MIN_COMPUTE_CAPABILITY,
    TRANSFORMERS_GPU_MIN_COMPUTE_CAPABILITY,
    VLLM_MIN_COMPUTE_CAPABILITY,
)
from core.errors import ArtifactInvalidError, EzRunnerError
from core.hardware import GPU_PRESETS, MIB, Gpu, GpuPreset, Target, target_label
from core.planning import Plan
from core.runspec import CONTEXT_ENV, PROFILE_ENV, Needs, Profile, RunSpec

#: GPU counts a neighbour may have: powers of two up to a full 8-GPU server (and the plan's own count).
NEIGHBOUR_GPU_COUNTS = (1, 2, 4, 8)
#: Presets within this share of a GPU's memory are "the same memory size" (an H100's 81,559 MiB and an
#: A100-80's 81,920 MiB are one size; an L40S's 46,068 MiB and an RTX A6000's 49,140 MiB another).
SAME_SIZE_SHARE = 0.1
#: bfloat16 needs compute capability 8.0 (Ampere) or newer: the rule core.engines.shared.choose_dtype plans by.
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)
#: The least compute capability each engine's CUDA image runs on (core/engines/versions.py).
ENGINE_MIN_COMPUTE_CAPABILITY: dict[str, tuple[int, int]] = {
    "vllm": VLLM_MIN_COMPUTE_CAPABILITY,
    "transformers": TRANSFORMERS_GPU_MIN_COMPUTE_CAPABILITY,
    "llama.cpp": LLAMA_CPP_CUDA_MIN_COMPUTE_CAPABILITY,
}
#: The server flag each engine's context is set with, where a shorter one can be given at start. llama.cpp
#: sizes its context across slots (``--ctx-size`` = slots × tokens), so its profiles are not shortened.
CONTEXT_FLAGS: dict[str, str] = {"vllm": "--max-model-len"}
#: The GPU query of the selection script (one CSV line per GPU).
NVIDIA_SMI_QUERY = "nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version --format=csv,noheader"
#: Variables that stand in for nvidia-smi and /proc/meminfo (``ezrunner profiles``, tests): GPU lines as
#: nvidia-smi prints them ("none": no GPU), and the RAM in bytes.
GPUS_ENV = "EZRUNNER_GPUS"
RAM_ENV = "EZRUNNER_RAM_BYTES"

Group = Literal["runnable", "shorter", "incompatible", "unchecked"]


# NEIGHBOURS


def _gpu_of(preset: GpuPreset) -> Gpu:
    return Gpu(
        name=preset.display_name,
        memory_bytes=preset.memory_bytes,
        compute_capability=preset.compute_capability,
        vendor=preset.vendor,
    )


def _same_size(a: int, b: int) -> bool:
    return abs(a - b) <= SAME_SIZE_SHARE * max(a, b)


def neighbour_gpus(*, gpu: Gpu) -> list[Gpu]:
    """The presets of the same vendor of ``gpu``'s memory size or of the next smaller one (and the smaller
    variant of the same card, A100-40 for an A100-80), each as a GPU."""
    presets = [p for p in GPU_PRESETS.values() if p.vendor == gpu.vendor]
    same = [p for p in presets if _same_size(p.memory_bytes, gpu.memory_bytes)]
    smaller = [p.memory_bytes for p in presets if p.memory_bytes < gpu.memory_bytes and p not in same]
    next_size = max(smaller, default=0)
    below = [p for p in presets if next_size and _same_size(p.memory_bytes, next_size) and p not in same]
    family = gpu.name.lower().replace("nvidia", "").replace("tesla", "").split()
    card = family[0].split("-")[0] if family else ""
    variants = [
        p for p in presets
        if card and p.key.split("-")[0] == card and p.memory_bytes < gpu.memory_bytes and p not in same + below
    ]  # fmt: skip
    smaller_variant = sorted(variants, key=lambda p: -p.memory_bytes)[:1]
    chosen = [_gpu_of(p) for p in (*same, *below, *smaller_variant)]
    return [g for g in chosen if g.name != gpu.name or g.memory_bytes != gpu.memory_bytes]


def neighbour_targets(*, plan: Plan) -> list[Target]:
    """The targets near ``plan``'s that the same image may serve: its GPU at 1, 2, 4, 8 GPUs, the presets of
    the same or next smaller memory size at those counts. None for a CPU or multi-node plan, or mixed GPUs."""
    target = plan.target
    if plan.device == "cpu" or plan.nodes > 1 or not target.gpus:
        return []
    first = target.gpus[0]
    if any((g.name, g.memory_bytes, g.compute_capability) != (first.name, first.memory_bytes,
                                                             first.compute_capability) for g in target.gpus):
        return []  # fmt: skip
    bare = dataclasses.replace(first, index=None)
    counts = sorted({*(n for n in NEIGHBOUR_GPU_COUNTS if n <= max(8, target.gpu_count)), target.gpu_count})
    targets = []
    for gpu in (bare, *neighbour_gpus(gpu=bare)):
        for count in counts:
            if gpu == bare and count == target.gpu_count:
                continue  # the plan itself
            near = dataclasses.replace(
                target, gpus=tuple(dataclasses.replace(gpu, index=i) for i in range(count)), origin="described",
                label="", notes=(), free_disk_bytes=None,
            )  # fmt: skip
            targets.append(dataclasses.replace(near, label=target_label(target=near)))
    return targets


def _same_image(plan: Plan, other: Plan) -> bool:
    return (
        other.fits
        and other.engine == plan.engine
        and other.device == plan.device
        and other.base_image == plan.base_image
        and other.nodes == 1
        and other.model.files == plan.model.files
    )


def with_neighbours(
    *,
    plan: Plan,
    also_for: Sequence[Target] = (),
    planner: Callable[..., Plan] | None = None,
) -> Plan:
    """``plan`` with ``neighbours``: the plans for nearby targets and ``also_for`` that fit and that the same
    image serves (same engine, device, base image and model files). Parallelism is re-planned per target;
    every other option stays as the user gave it, the engine and base image as the plan chose them."""
    if planner is None:
        from core.plan import plan as default_planner  # the planner sits above this module's users

        planner = default_planner
    if plan.nodes > 1:
        return plan
    options = dataclasses.replace(
        plan.options,
        engine=plan.engine,
        base_image=plan.base_image,
        tensor_parallel_size=None,
        data_parallel_size=None,
        quant=plan.settings.get("quant", plan.options.quant) if plan.engine == "llama.cpp" else plan.options.quant,
    )
    neighbours: list[Plan] = []
    for target in (*neighbour_targets(plan=plan), *also_for):
        try:
            other = planner(model=plan.model, target=target, options=options)
        except EzRunnerError:
            continue  # a target this model or engine cannot take at all is simply no profile
        if _same_image(plan, other):
            neighbours.append(dataclasses.replace(other, neighbours=()))
    return dataclasses.replace(plan, neighbours=tuple(neighbours))


# NEEDS


def _cc_text(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def needs_for(*, plan: Plan) -> Needs:
    """The facts a server must meet to start ``plan``'s profile, from its memory budgets, engine and image."""
    ram = next((b for b in plan.per_gpu if b.index is None), None)
    min_ram = 0
    if ram is not None:
        share = ram.capacity_bytes / ram.total_bytes if ram.total_bytes and ram.capacity_bytes else 1.0
        min_ram = math.ceil(ram.used_bytes / share)
    gpus = [b for b in plan.per_gpu if b.index is not None]
    if plan.device == "cpu" or not gpus:
        return Needs(min_ram_bytes=min_ram)
    context = max(plan.max_model_len, 1)
    fixed = max(b.weights_bytes + b.overhead_bytes for b in gpus)
    per_token = math.ceil(max(b.kv_cache_bytes for b in gpus) / context)
    fraction = min(b.capacity_bytes / b.total_bytes for b in gpus if b.total_bytes) if any(
        b.total_bytes for b in gpus) else 1.0  # fmt: skip
    fraction = math.floor(fraction * 10_000) / 10_000  # four digits: the JSON stays short and stable
    needs = Needs(
        min_gpu_memory_bytes=math.ceil((fixed + per_token * plan.max_model_len) / fraction),
        gpu_fixed_bytes=fixed,
        gpu_kv_bytes_per_token=per_token,
        gpu_memory_fraction=fraction,
        min_ram_bytes=min_ram,
    )
    if plan.device != "cuda":
        return needs
    cc = ENGINE_MIN_COMPUTE_CAPABILITY.get(plan.engine, (0, 0))
    if plan.dtype == "bfloat16":
        cc = max(cc, BF16_MIN_COMPUTE_CAPABILITY)
    cuda = engine_for(plan.engine).image_cuda_version(base_image=plan.base_image) or ""
    flag = CONTEXT_FLAGS.get(plan.engine, "")
    return dataclasses.replace(
        needs,
        min_compute_capability=_cc_text(cc) if cc != (0, 0) else "",
        min_cuda=cuda,
        min_driver=CUDA_MIN_DRIVER.get(cuda, ""),
        context_flag=flag,
        min_context=min(MIN_SERVABLE_CONTEXT, plan.max_model_len) if flag else 0,
    )


def _context_label(tokens: int) -> str:
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)


def profile_name(plan: Plan) -> str:
    """"cuda-4gpu-tp2-40k": device, GPUs, vLLM's tensor parallelism and context, what tells profiles apart
    (llama.cpp and transformers split no tensors: "cuda-2gpu-32k")."""
    context = _context_label(plan.max_model_len)
    if plan.device == "cpu":
        return f"cpu-{context}"
    tp = f"-tp{plan.tensor_parallel_size}" if plan.engine == "vllm" else ""
    return f"{plan.device}-{plan.gpus_per_node}gpu{tp}-{context}"


def _covered(profile: Profile, need: Needs, kept: Sequence[Profile]) -> bool:
    """Whether a kept profile of the same shape (GPUs, parallelism) and at least this context needs about as much
    memory per GPU: on a card of that size it starts with the context that fits there, so this one would add a
    name, not a server."""
    shape = (profile.gpus_per_node, profile.tensor_parallel_size, profile.data_parallel_size, profile.device)
    return any(
        (p.gpus_per_node, p.tensor_parallel_size, p.data_parallel_size, p.device) == shape
        and p.needs.context_flag
        and p.max_model_len >= profile.max_model_len
        and _same_size(p.needs.min_gpu_memory_bytes, need.min_gpu_memory_bytes)
        for p in kept
    )


def profiled_run_spec(*, spec: RunSpec, plan: Plan, spec_of: Callable[[Plan], RunSpec]) -> RunSpec:
    """``spec`` (the engine's, for ``plan``) with the needs of its default profile and one profile per
    neighbour (``spec_of`` renders a neighbour's spec); profiles that start the same command are one."""
    if plan.nodes > 1:
        return spec
    default = dataclasses.replace(spec.default, needs=needs_for(plan=plan))
    profiles = [default]
    needs = {id(n): needs_for(plan=n) for n in plan.neighbours}
    card = plan.target.gpus[0].name if plan.target.gpus else ""

    def order(n: Plan) -> tuple[int, bool, int, str]:
        # per GPU count: the plan's own card first (its profile then names the card the user described)
        other_card = not n.target.gpus or n.target.gpus[0].name != card
        return -n.gpus_per_node, other_card, -needs[id(n)].min_gpu_memory_bytes, n.target.label

    ordered = sorted(plan.neighbours, key=order)
    for neighbour in ordered:
        profile = spec_of(neighbour).default
        if any(p.argv == profile.argv and p.env == profile.env for p in profiles) or _covered(
            profile, needs[id(neighbour)], profiles
        ):
            continue
        name, suffix = profile_name(neighbour), 1
        while any(p.name == (name if suffix == 1 else f"{name}-{suffix}") for p in profiles):
            suffix += 1
        profiles.append(
            dataclasses.replace(
                profile,
                name=name if suffix == 1 else f"{name}-{suffix}",
                needs=needs[id(neighbour)],
                description=profile.description.replace("|", "/"),
            )
        )
    return dataclasses.replace(spec, profiles=tuple(profiles))


# THE SELECTION SCRIPT

# The awk program: reads "P|..." profile rows, "R|bytes" (RAM) and nvidia-smi's CSV lines (G,...), then judges
# every profile. Plain POSIX awk (mawk, busybox): no gawk extensions, numbers printed with %.0f (mawk's %d is
# 32-bit on some builds).
_AWK = r"""
function vnum(v,   a, n, i, s) { n = split(v, a, "."); s = 0
  for (i = 1; i <= 3; i++) s = s * 100000 + (i <= n ? a[i] + 0 : 0); return s }
function gib(b) { return sprintf("%.1f GiB", b / 1073741824) }
function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t\r]+$/, "", s); return s }
function say(s) { print s > "/dev/stderr" }
$1 == "P" { n++; name[n] = $2; dev[n] = $3; gpus[n] = $4 + 0; mem[n] = $5 + 0; fixed[n] = $6 + 0
  kvpt[n] = $7 + 0; frac[n] = $8 + 0; ctx[n] = $9 + 0; minctx[n] = $10 + 0; mincc[n] = $11; mindrv[n] = $12
  mincuda[n] = $13; minram[n] = $14 + 0; flag[n] = $15; isdef[n] = $16; desc[n] = $17; next }
$1 == "R" { ram = $2 + 0; next }
$1 == "S" { state = $2; next }
{ c = split($0, f, ","); if (c < 4) next
  m = trim(f[2]); gsub(/[^0-9]/, "", m); if (m == "") next
  ng++; gname = trim(f[1]); gb = m * 1048576; gcc = trim(f[3]); gdrv = trim(f[4])
  if (ng == 1 || gb < gmem) gmem = gb
  if (ng == 1 || vnum(gcc) < vnum(gccmin)) gccmin = gcc
  if (ng == 1) { gdriver = gdrv; first = gname } else if (gname != first) mixed = 1 }
function judge(i,   why, avail, t) {
  fit[i] = ""; reason[i] = ""; use[i] = ctx[i]
  if (dev[i] == "cpu") {
    if (minram[i] > 0 && ram > 0 && ram < minram[i]) {
      fit[i] = "incompatible"; reason[i] = "memory: needs " gib(minram[i]) " of RAM, this server has " gib(ram)
    } else { fit[i] = "runnable"
      reason[i] = (minram[i] > 0 && ram > 0 ? "needs " gib(minram[i]) " of RAM, this server has " gib(ram) : "CPU") }
    return }
  if (dev[i] != "cuda" || state == "unknown") {
    fit[i] = "unchecked"; reason[i] = (dev[i] != "cuda" ? toupper(dev[i]) " GPUs are not checked here" \
      : "nvidia-smi is not available here, so the GPUs were not checked"); return }
  why = ""
  if (ng < gpus[i]) why = "GPUs: needs " gpus[i] ", this server has " (ng + 0)
  if (ng > 0 && mincc[i] != "" && vnum(gccmin) < vnum(mincc[i]))
    why = why (why == "" ? "" : "; ") "compute capability: needs " mincc[i] " or newer, the GPU has " gccmin
  if (ng > 0 && mindrv[i] != "" && vnum(gdriver) < vnum(mindrv[i]))
    why = why (why == "" ? "" : "; ") "driver: needs " mindrv[i] " or newer (CUDA " mincuda[i] \
      "), this server has " gdriver
  if (ng > 0 && mem[i] > 0 && gmem < mem[i]) {
    t = 0
    if (flag[i] != "" && kvpt[i] > 0) { avail = gmem * frac[i] - fixed[i]
      if (avail > 0) t = int(avail / kvpt[i] / __MULTIPLE__) * __MULTIPLE__
      if (t > ctx[i]) t = ctx[i] }
    if (t >= minctx[i] && t > 0) use[i] = t
    else why = why (why == "" ? "" : "; ") "memory: needs " gib(mem[i]) " per GPU, the GPU has " gib(gmem)
  }
  if (minram[i] > 0 && ram > 0 && ram < minram[i])  # what a GPU profile keeps in system RAM (llama.cpp)
    why = why (why == "" ? "" : "; ") "memory: needs " gib(minram[i]) " of RAM, this server has " gib(ram)
  if (why != "") { fit[i] = "incompatible"; reason[i] = why; return }
  fit[i] = (use[i] < ctx[i] ? "shorter" : "runnable")
  reason[i] = "uses " gpus[i] " of " ng " GPU" (ng > 1 ? "s" : "") "; needs " gib(mem[i]) " per GPU for " ctx[i] \
    " tokens, the GPU has " gib(gmem)
}
# The better of two that fit: more GPUs used, then the longer context it starts with here (a shorter one
# counts as what it is), then one that fits as planned, then the default, then the profile made for the most
# memory (the one planned closest to this server).
function better(i, b) {
  if (gpus[i] != gpus[b]) return gpus[i] > gpus[b]
  if (use[i] != use[b]) return use[i] > use[b]
  if (fit[i] != fit[b]) return fit[i] == "runnable"
  if (isdef[i] != isdef[b]) return isdef[i] == "1"
  return mem[i] > mem[b] }
function best(group,   i, b) { b = 0
  for (i = 1; i <= n; i++) if (index(" " group " ", " " fit[i] " ") && (b == 0 || better(i, b))) b = i
  return b }
function closest(   i, b) { b = 0
  for (i = 1; i <= n; i++) if (b == 0 || gpus[i] < gpus[b] || (gpus[i] == gpus[b] && mem[i] < mem[b])) b = i
  return b }
function hardware(   i, gpu) {
  for (i = 1; i <= n; i++) if (dev[i] != "cpu") gpu = 1
  if (!gpu) return "CPU" (ram > 0 ? ", " gib(ram) " of RAM" : "")
  if (state == "unknown") return "GPUs not checked (no nvidia-smi)"
  if (ng == 0) return "no NVIDIA GPU" (ram > 0 ? ", " gib(ram) " of RAM" : "")
  return ng " x " first (mixed ? " and others" : "") " (" gib(gmem) (mixed ? " the smallest" : "") \
    ", compute capability " gccmin ", driver " gdriver ")" (ram > 0 ? ", " gib(ram) " of RAM" : "")
}
function line(i) {
  return sprintf("  %-24s %s%s\n    %s", name[i], desc[i], (isdef[i] == "1" ? " (default)" : ""), \
    (fit[i] == "shorter" ? "--max-model-len " use[i] " fits (planned " ctx[i] "): " : "") reason[i])
}
END {
  for (i = 1; i <= n; i++) judge(i)
  if (mode == "table") {
    for (i = 1; i <= n; i++) printf "%s\t%s\t%.0f\t%s\n", fit[i], name[i], use[i], reason[i]
    exit 0 }
  if (mode == "list") {
    print "Profiles of this image on this server: " hardware()
    split("runnable shorter incompatible unchecked", groups, " ")
    titles["runnable"] = "Runnable"; titles["shorter"] = "Runnable with a shorter context"
    titles["incompatible"] = "Incompatible"; titles["unchecked"] = "Not checked"
    for (g = 1; g <= 4; g++) { shown = 0
      for (i = 1; i <= n; i++) if (fit[i] == groups[g]) {
        if (!shown) print titles[groups[g]] ":"
        shown = 1; print line(i) }
      if (!shown && g < 4) print titles[groups[g]] ": none" }
    c = best("runnable shorter")
    if (c > 0) print "load.sh and the image start " name[c] \
      (fit[c] == "shorter" ? " with --max-model-len " use[c] : "") "."
    else print "No profile fits this server."
    exit 0 }
  if (forced != "") {
    c = 0; for (i = 1; i <= n; i++) if (name[i] == forced) c = i
    if (c == 0) { all = ""; for (i = 1; i <= n; i++) all = all (i > 1 ? ", " : "") name[i]
      say("ezrunner: this image has no profile " forced "."); say("  Next: choose one of: " all "."); exit 2 }
    if (fit[c] == "incompatible")
      say("ezrunner: profile " forced " was forced although it does not fit: " reason[c] ".")
    else say("ezrunner: profile " forced " (" desc[c] "), as asked: " reason[c] ".")
    printf "%s %.0f\n", name[c], use[c]; exit 0 }
  c = best("runnable shorter")
  how = (fit[c] == "shorter" ? "it fits with a shorter context" : "it fits")
  # GPUs that cannot be checked: the plan the user made, as packed
  if (c == 0) { for (i = 1; i <= n; i++) if (fit[i] == "unchecked" && isdef[i] == "1") c = i; how = "" }
  if (c == 0) c = best("unchecked")
  if (c == 0) {
    k = closest()
    say("ezrunner: no profile of this image fits this server (" hardware() ").")
    say("  The closest is " name[k] " (" desc[k] "): " reason[k] ".")
    say("  Next: start it on a server that has what it needs, or force a profile: ./load.sh --profile NAME,")
    say("  or docker run -e __PROFILE_ENV__=NAME; ./load.sh --profiles lists them.")
    exit 1 }
  if (how == "") say("ezrunner: starting profile " name[c] " (" desc[c] ") unchecked: " reason[c] ".")
  else {
    say("ezrunner: starting profile " name[c] " (" desc[c] ") on " hardware() ":")
    if (n == 1) why = "it is the only profile of this image"
    else if (gpus[c] > 0) why = "of the profiles that fit it uses the most GPUs, then the longest context"
    else why = "of the profiles that fit it has the longest context"
    say("  " how (fit[c] == "shorter" ? ", --max-model-len " use[c] " of the planned " ctx[c] : "") "; " reason[c] \
      "; " why ".") }
  printf "%s %.0f\n", name[c], use[c]
}
"""


def _row(profile: Profile, *, default: bool) -> str:
    n = profile.needs
    cells = [
        "P", profile.name, profile.device, str(profile.gpus_per_node), str(n.min_gpu_memory_bytes),
        str(n.gpu_fixed_bytes), str(n.gpu_kv_bytes_per_token), f"{n.gpu_memory_fraction:g}",
        str(profile.max_model_len), str(n.min_context), n.min_compute_capability, n.min_driver, n.min_cuda,
        str(n.min_ram_bytes), n.context_flag, "1" if default else "0",
        " ".join(profile.description.replace("|", "/").split()),
    ]  # fmt: skip
    return "|".join(cells)


def selection_script(spec: RunSpec) -> str:
    """The POSIX sh + awk script that judges this spec's profiles against the server it runs on:
    ``select [NAME]`` prints ``NAME CONTEXT`` (the choice; messages on stderr; exit 1: nothing fits,
    2: no such profile), ``list`` the three groups for people, ``table`` one tab-separated row per profile.
    ``$EZRUNNER_GPUS`` / ``$EZRUNNER_RAM_BYTES`` stand in for nvidia-smi and /proc/meminfo."""
    rows = "\n".join(_row(p, default=p.name == spec.default_profile) for p in spec.profiles)
    program = _AWK.replace("__MULTIPLE__", str(MAX_MODEL_LEN_MULTIPLE)).replace("__PROFILE_ENV__", PROFILE_ENV)
    if "'" in program:
        raise ValueError("the awk program must not hold a single quote: the shell quotes it with them")
    return f"""#!/bin/sh
# Which profile of this image fits this server: rendered by EZ Runner from the image's run spec; the image's
# ENTRYPOINT and load.sh run the same text. Usage: select-profile.sh select [NAME] | list | table
mode=${{1:-select}}
forced=${{2:-}}
state=checked
if [ -n "${{{GPUS_ENV}:-}}" ]; then
  gpus=${GPUS_ENV}
elif command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$({NVIDIA_SMI_QUERY} 2>/dev/null) || gpus=none
else
  gpus=none
  state=unknown
fi
ram=${{{RAM_ENV}:-}}
if [ -z "$ram" ] && [ -r /proc/meminfo ]; then
  ram=$(awk '/^MemTotal:/ {{ printf "%.0f", $2 * 1024 }}' /proc/meminfo)
fi
# A container's memory limit (cgroup v2, then v1) is the RAM it has.
for limit in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes; do
  if [ -z "${{{RAM_ENV}:-}}" ] && [ -r "$limit" ]; then
    cap=$(cat "$limit" 2>/dev/null)
    case "$cap" in ''|*[!0-9]*) ;; *) if [ -n "$ram" ] && [ "$cap" -lt "$ram" ] 2>/dev/null; then ram=$cap; fi ;; esac
  fi
done
{{
cat <<'EZRUNNER_PROFILES'
{rows}
EZRUNNER_PROFILES
printf 'S|%s\\n' "$state"
printf 'R|%s\\n' "${{ram:-0}}"
[ "$gpus" = none ] || printf '%s\\n' "$gpus"
}} | awk -F'|' -v mode="$mode" -v forced="$forced" '{program}'
"""


# CHECKING A TARGET (ezrunner profiles)


@dataclass(frozen=True)
class ProfileFit:
    """How one profile fits a server: ``group`` runnable / shorter / incompatible / unchecked."""

    name: str
    group: Group
    max_model_len: int  # the context it starts with there (shorter: the one that fits)
    reason: str
    profile: Profile


def gpu_lines(target: Target) -> str:
    """``target``'s GPUs as the selection script's nvidia-smi query prints them ("none" without NVIDIA GPUs)."""
    lines = [
        f"{g.name}, {g.memory_bytes // MIB} MiB, {g.compute_capability_str}, {target.driver_version or '0'}"
        for g in target.gpus
        if g.vendor == "nvidia"
    ]
    return "\n".join(lines) or "none"


def _run_script(spec: RunSpec, *, target: Target, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    shell = shutil.which("sh")
    if shell is None:
        raise EzRunnerError(
            "Checking profiles runs the image's selection script, which needs a POSIX sh and awk.",
            hint="Run it on Linux or macOS, or run ./load.sh --profiles on the server itself.",
        )
    env = {**os.environ, GPUS_ENV: gpu_lines(target), RAM_ENV: str(target.ram_bytes or 0)}
    env.pop(PROFILE_ENV, None)
    env.pop(CONTEXT_ENV, None)
    return subprocess.run(
        [shell, "-c", selection_script(spec), "select-profile", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def check_profiles(*, spec: RunSpec, target: Target) -> list[ProfileFit]:
    """Every profile of ``spec`` judged against ``target`` by the image's own selection script."""
    done = _run_script(spec, target=target, args=["table"])
    if done.returncode != 0:
        raise ArtifactInvalidError(
            f"The image's profile selection script failed: {done.stderr.strip()[:300]}",
            hint="Pack the model again with this EZ Runner version.",
        )
    fits = []
    for row in done.stdout.splitlines():
        group, name, tokens, reason = row.split("\t", 3)
        fits.append(ProfileFit(name, group, int(tokens), reason, spec.profile(name)))  # type: ignore[arg-type]
    return fits


def listing(*, spec: RunSpec, target: Target) -> str:
    """The ``list`` text of the selection script for ``target``: what ``load.sh --profiles`` prints there."""
    return _run_script(spec, target=target, args=["list"]).stdout


def choose(*, spec: RunSpec, target: Target) -> tuple[str, int] | None:
    """The profile and context the image would start on ``target``; None when it would refuse."""
    done = _run_script(spec, target=target, args=["select"])
    if done.returncode != 0:
        return None
    name, tokens = done.stdout.split()
    return name, int(tokens)


__all__ = [
    "GPUS_ENV",
    "NVIDIA_SMI_QUERY",
    "RAM_ENV",
    "ProfileFit",
    "check_profiles",
    "choose",
    "gpu_lines",
    "listing",
    "needs_for",
    "neighbour_gpus",
    "neighbour_targets",
    "profile_name",
    "profiled_run_spec",
    "selection_script",
    "with_neighbours",
]
