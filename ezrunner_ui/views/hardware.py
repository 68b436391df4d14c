"""Step 2: the machine the image will run on: this one (detected) or an air-gapped server (described)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pandas as pd
import streamlit as st

from core import hardware
from core.engines.llamacpp import device_for
from core.errors import InvalidTargetError
from core.hardware import GPU_PRESETS, Target, describe_target, detect_local
from ezrunner_ui.app_options import HARDWARE_PREFIX, engine_options_form, show_notices
from ezrunner_ui.i18n import fmt_bytes, fmt_target, t
from ezrunner_ui.state import PAGE_MODEL, PAGE_PLAN, WizardState, seed, wizard
from ezrunner_ui.ui_errors import error_text

CUSTOM = "custom"
API_NAMES = {"cuda": "CUDA", "rocm": "ROCm", "vulkan": "Vulkan"}
#: core's error field keys (core.errors, ``error.field``) → this form's fields
CORE_FIELDS = {"gpus": "gpu_count", "gpu_memory": "gpu_memory_gib", "driver": "driver_version", "ram": "ram_gib",
               "gpu_api": "gpu_preset", "cpu_only": "general"}  # fmt: skip
# describe_target's messages start with the argument they are about; map them to the form's fields
FIELDS = (
    "gpu_preset",
    "gpu_count",
    "gpu_memory_gib",
    "compute_capability",
    "driver_version",
    "ram_gib",
    "cpu_cores",
)


def _target_table(target: Target) -> None:
    if target.gpus:
        rows = [
            {
                t("hardware.col_gpu"): gpu.index if gpu.index is not None else number,
                t("hardware.col_name"): gpu.name,
                t("hardware.col_memory"): fmt_bytes(gpu.memory_bytes),
                t("hardware.col_cc"): gpu.compute_capability_str,
                t("hardware.col_driver"): target.driver_version or "—",
                t("hardware.col_cuda"): target.cuda_version or "—",
            }
            for number, gpu in enumerate(target.gpus)
        ]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    else:
        st.info(t("hardware.no_gpu"), icon=":material/memory:")
    cores, ram, disk = st.columns(3)
    cores.metric(t("hardware.cpu_cores"), target.cpu_cores or "—")
    ram.metric(t("hardware.ram"), fmt_bytes(target.ram_bytes))
    if target.origin == "detected":
        disk.metric(t("hardware.free_disk"), fmt_bytes(target.free_disk_bytes))
    for note in target.notes:
        st.caption(f":material/info: {note}")


def error_field(error: InvalidTargetError) -> str:
    """Which form field an error is about: core's ``error.field`` key where it has one, else the argument
    its message starts with; "general" when neither names a field of this form."""
    key = getattr(error, "field", None)
    if isinstance(key, str) and CORE_FIELDS.get(key, key) in FIELDS:
        return CORE_FIELDS.get(key, key)
    first = str(error).split(" ", 1)[0]
    return first if first in FIELDS else "general"


def gpu_apis(vendor: str | None) -> tuple[str, ...]:
    """The GPU interfaces core plans for a vendor's cards (all of them for a card with no preset); empty
    where this core has no choice of interface."""
    by_vendor = getattr(hardware, "GPU_APIS_BY_VENDOR", None)
    if not isinstance(by_vendor, Mapping):
        return ()
    if vendor is None:
        return tuple(dict.fromkeys(api for apis in by_vendor.values() for api in apis))
    return tuple(by_vendor.get(vendor, ()))


def preset_vendor(key: str | None) -> str:
    """Who makes a preset's GPU ("nvidia", "amd", ...): the preset's own field where core has one."""
    preset = GPU_PRESETS.get(key or "")
    return str(getattr(preset, "vendor", "nvidia")) if preset is not None else "nvidia"


def _preset_label(key: str) -> str:
    name = GPU_PRESETS[key].display_name
    vendor = preset_vendor(key)
    brand = t(f"hardware.vendor_{vendor}")
    return name if vendor == "nvidia" or name.lower().startswith(vendor) else f"{brand} {name}"


def _engine_preferences(state: WizardState) -> None:
    with st.expander(t("hardware.engine_title"), icon=":material/settings:"):
        st.caption(t("hardware.engine_intro"))
        engine_options_form(state, prefix=HARDWARE_PREFIX)
    show_notices(state)


def _use(state: WizardState, target: Target) -> None:
    state.target = target


def _detect_section(state: WizardState) -> None:
    st.write(t("hardware.detect_intro"))
    if st.button(t("hardware.detect_button"), key="detect_button", icon=":material/search:"):
        with st.spinner(t("hardware.detecting")):
            state.detected = detect_local()
    if state.detected is not None:
        _target_table(state.detected)
        st.button(
            t("hardware.use_detected"),
            key="use_detected",
            type="primary",
            on_click=_use,
            args=(state, state.detected),
            disabled=state.target == state.detected,
        )


def _field_error(slot: st.delta_generator.DeltaGenerator, errors: dict[str, str], field: str) -> None:
    if field in errors:
        slot.error(errors[field], icon=":material/error:")


def _describe_section(state: WizardState) -> None:
    st.write(t("hardware.describe_intro"))
    presets = [*GPU_PRESETS, CUSTOM]
    # labels are made now, in the script run: a format_func that called t() later would miss the language
    preset_names = {key: _preset_label(key) for key in GPU_PRESETS}
    preset_names[CUSTOM] = t("hardware.custom_gpu")
    cpu_only = st.checkbox(t("hardware.cpu_only"), key="hw_cpu_only", persist_state="session")
    left, right = st.columns(2)
    with left:
        preset = st.selectbox(
            t("hardware.preset"),
            options=presets,
            format_func=preset_names.__getitem__,
            key="hw_preset",
            index=presets.index("a100-80gb"),
            disabled=cpu_only,
            persist_state="session",
        )
        preset_slot = st.empty()
        count = st.number_input(
            t("hardware.gpu_count"),
            key="hw_gpu_count",
            value=1,
            step=1,
            disabled=cpu_only,
            persist_state="session",
        )
        count_slot = st.empty()
        # a cluster: identical servers (nodes) of these GPUs; vLLM spans them with pipeline parallelism
        seed("hw_nodes", state.options.nodes)
        nodes = st.number_input(t("plan.nodes"), key="hw_nodes", min_value=1, max_value=64, step=1,
                                disabled=cpu_only, help=t("hardware.nodes_help"))  # fmt: skip
        if int(nodes) != state.options.nodes:
            state.options = replace(state.options, nodes=int(nodes))
            st.session_state.pop("opt_nodes", None)  # the Plan page's field re-seeds from the options
        memory = st.number_input(
            t("hardware.gpu_memory"),
            key="hw_gpu_memory",
            value=None,
            step=1.0,
            placeholder=t("hardware.from_preset"),
            disabled=cpu_only,
            persist_state="session",
        )
        memory_slot = st.empty()
        vendor = preset_vendor(preset) if not cpu_only else "nvidia"
        apis = gpu_apis(vendor) if preset != CUSTOM else gpu_apis(None)
        api: str | None = None
        if len(apis) > 1 and not cpu_only:
            # how the card is driven where its vendor offers more than one way (an AMD card: ROCm or Vulkan)
            api = st.selectbox(
                t("hardware.gpu_api"), options=apis, format_func=lambda a: API_NAMES.get(a, a), key="hw_gpu_api"
            )
            if preset == CUSTOM and api != "cuda":
                vendor = "amd"  # core: a card with no preset driven by ROCm or Vulkan is an AMD card
        capability = st.text_input(
            t("hardware.compute_capability"),
            key="hw_cc",
            placeholder=t("hardware.cc_placeholder"),
            disabled=cpu_only or vendor != "nvidia",
            persist_state="session",
        )
        capability_slot = st.empty()
    with right:
        driver = st.text_input(
            t("hardware.driver"),
            key="hw_driver",
            placeholder="550.54.15",
            help=t("hardware.driver_help"),
            disabled=cpu_only or vendor != "nvidia",
            persist_state="session",
        )
        driver_slot = st.empty()
        ram = st.number_input(t("hardware.ram_gib"), key="hw_ram", value=None, step=1.0, persist_state="session")
        ram_slot = st.empty()
        cores = st.number_input(t("hardware.cores"), key="hw_cpu_cores", value=None, step=1, persist_state="session")
        cores_slot = st.empty()

    errors: dict[str, str] = {}
    described: Target | None = None
    try:
        if cpu_only:
            described = describe_target(cpu_only=True, ram_gib=ram, cpu_cores=None if cores is None else int(cores))
        else:
            described = describe_target(
                gpu_preset=None if preset == CUSTOM else preset,
                gpu_count=int(count),
                gpu_memory_gib=memory,
                compute_capability=(capability.strip() or None) if vendor == "nvidia" else None,
                driver_version=(driver.strip() or None) if vendor == "nvidia" else None,
                ram_gib=ram,
                cpu_cores=None if cores is None else int(cores),
                # only where this core offers a choice of interface (core.hardware.GPU_APIS_BY_VENDOR)
                **({"gpu_api": api} if api is not None else {}),  # type: ignore[arg-type]
            )
    except InvalidTargetError as error:
        errors[error_field(error)] = error_text(code=error.code, message=str(error))

    for slot, field in (
        (preset_slot, "gpu_preset"),
        (count_slot, "gpu_count"),
        (memory_slot, "gpu_memory_gib"),
        (capability_slot, "compute_capability"),
        (driver_slot, "driver_version"),
        (ram_slot, "ram_gib"),
        (cores_slot, "cpu_cores"),
    ):
        _field_error(slot, errors, field)
    if "general" in errors:
        st.error(errors["general"], icon=":material/error:")

    if described is not None:
        st.caption(t("hardware.described_as", label=fmt_target(described)))
        if vendor != "nvidia" and described.gpus:
            device = getattr(described, "gpu_api", None) or device_for(described)
            st.caption(t("hardware.non_nvidia_note", vendor=t(f"hardware.vendor_{vendor}"),
                         device=API_NAMES.get(device, device)))  # fmt: skip
    st.button(
        t("hardware.use_described"),
        key="use_described",
        type="primary",
        on_click=_use,
        args=(state, described),
        disabled=described is None or state.target == described,
    )


def render() -> None:
    state = wizard()
    st.title(t("hardware.title"))
    if state.model is None:
        st.info(t("hardware.no_model"), icon=":material/info:")
        st.page_link(PAGE_MODEL, label=t("common.back_to_model"), icon=":material/arrow_back:")

    if state.target is not None:
        where = t("hardware.origin_detected") if state.target.origin == "detected" else t("hardware.origin_described")
        used = t("hardware.plan_uses", label=fmt_target(state.target), origin=where)
        st.success(used, icon=":material/check_circle:")
    else:
        st.warning(t("hardware.no_target"), icon=":material/help:")

    mode = st.radio(
        t("hardware.mode"),
        options=("detect", "describe"),
        format_func={m: t(f"hardware.mode_{m}") for m in ("detect", "describe")}.__getitem__,
        key="hw_mode",
        horizontal=True,
        persist_state="session",
    )
    with st.container(border=True):
        if mode == "detect":
            _detect_section(state)
        else:
            _describe_section(state)

    _engine_preferences(state)

    if state.target is not None and st.button(
        t("hardware.next"),
        key="to_plan",
        type="primary",
        icon=":material/arrow_forward:",
        disabled=state.model is None,
    ):
        st.switch_page(PAGE_PLAN)


render()
