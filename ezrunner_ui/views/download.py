"""Step 5: fetch a finished pack (streamed from disk by the /api/artifacts route) and use it offline."""

from __future__ import annotations

import shlex
from pathlib import Path
from urllib.parse import urlsplit

import streamlit as st

from core import runspec
from core.archive import names
from core.errors import EzRunnerError
from core.history import History, PackRecord
from core.jobs import REGISTRY
from core.pack_extras import image_run_spec, is_signed, pack_run_spec, sbom_summary
from core.render import container_name, find_load_script
from core.runspec import RunSpec
from ezrunner_ui import routes
from ezrunner_ui.i18n import fmt_bytes, fmt_duration, t
from ezrunner_ui.state import PAGE_BUILD, PAGE_HISTORY, PAGE_TRY, record_from_url, wizard


def artifact_url(record_id: str, kind: str) -> str:
    """Relative URL of the server's download route; same server, so no host is needed."""
    return routes.artifact_url(record_id=record_id, kind=kind)


def _base_url() -> str:
    """scheme://host:port of this app as the browser sees it, for copy-paste curl lines."""
    url = st.context.url or ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "http://127.0.0.1:8501"


def load_script_name(archive: Path) -> str:
    """The name of the load.sh pack wrote for ``archive`` (``load.sh`` when none is found on disk)."""
    found = find_load_script(archive)
    return found.name if found is not None else "load.sh"


def run_command(record: PackRecord) -> str | None:
    """The docker run line for the target server, always from the engine's run spec (never rebuilt here):
    the record's (written from the spec when the pack finished), else the spec baked into the image's label
    when the image is still in the local engine. None when neither is there (an old record, a deleted image).
    """
    if record.run_command:
        return record.run_command
    for job in REGISTRY.all():
        result = job.snapshot().result
        if getattr(result, "record_id", None) == record.id and getattr(result, "run_command", None):
            return str(result.run_command)
    stored = record.plan.get("run_command")
    if isinstance(stored, str) and stored:
        return stored
    if not record.image_tag:
        return None
    spec = image_run_spec(image_tag=record.image_tag)
    if spec is None:
        return None
    return runspec.run_command(spec, name=container_name(record.image_tag), restart=None)


def _pick_record(history: History) -> PackRecord | None:
    state = wizard()
    wanted = record_from_url() or state.record_id
    record = history.get(wanted) if wanted else None
    if record is not None:
        state.record_id = record.id
        return record
    finished = [r for r in history.list() if r.outcome == "succeeded" and r.archive]
    if not finished:
        return None
    chosen = st.selectbox(
        t("download.pick"),
        options=[r.id for r in finished],
        format_func=lambda rid: next(
            f"{r.model_id} · {r.model_commit[:12]} · {fmt_bytes(r.size)}" for r in finished if r.id == rid
        ),
        key="download_pick",
    )
    return next((r for r in finished if r.id == chosen), None)


def _files(record: PackRecord) -> None:
    archive = Path(record.archive or "")
    parts = [Path(p) for p in record.parts]
    split = len(parts) > 1
    st.subheader(t("download.files"))
    if split:
        st.write(t("download.split_into", count=len(parts)))
        columns = st.columns(min(4, len(parts)))
        for index, part in enumerate(parts):
            size = part.stat().st_size if part.is_file() else None
            columns[index % len(columns)].link_button(
                t("download.part", name=part.name, size=fmt_bytes(size)),
                artifact_url(record.id, f"part/{index}"),
                icon=":material/download:",
            )
    else:
        st.link_button(
            t("download.archive", name=archive.name, size=fmt_bytes(record.size)),
            artifact_url(record.id, "archive"),
            type="primary",
            icon=":material/download:",
        )
    left, right = st.columns(2)
    left.link_button(
        t("download.checksum", name=names.checksum_name(archive.name)),
        artifact_url(record.id, "sha256"),
        icon=":material/verified:",
    )
    right.link_button(
        t("download.load_script", name=load_script_name(archive)),
        artifact_url(record.id, "load.sh"),
        icon=":material/terminal:",
    )
    st.caption(t("download.resume_hint"))
    files = [(f"part/{i}", Path(p).name) for i, p in enumerate(parts)] if split else [("archive", archive.name)]
    files += [("sha256", names.checksum_name(archive.name)), ("load.sh", load_script_name(archive))]
    base = _base_url()
    # -C - resumes a broken download; it cannot be combined with -J, so the file name is given with -o
    st.code(
        "\n".join(f"curl -fC - -o {shlex.quote(name)} {base}{artifact_url(record.id, kind)}" for kind, name in files),
        language="bash",
    )


def _commands(record: PackRecord) -> None:
    archive = Path(record.archive or "").name
    parts = [Path(p).name for p in record.parts]
    split = len(parts) > 1
    script = load_script_name(Path(record.archive or ""))
    st.subheader(t("download.on_server"))
    st.write(t("download.copy_all"))
    whole_check = f"sha256sum -c {shlex.quote(names.checksum_name(archive))}"
    check = f"sha256sum -c {shlex.quote(names.parts_checksum_name(archive))}" if split else whole_check
    st.markdown(t("download.easy_way"))
    st.code(f"{check}\nbash {shlex.quote(script)}", language="bash")
    st.markdown(t("download.by_hand"))
    lines = []
    if split:
        lines += [
            check,
            f"cat {' '.join(shlex.quote(p) for p in parts)} > {shlex.quote(archive)}",
            whole_check,
        ]
    else:
        lines.append(check)
    if archive.endswith(names.ZSTD_SUFFIX):
        lines.append(f"zstd -dc {shlex.quote(archive)} | docker load")
    else:
        lines.append(f"docker load -i {shlex.quote(archive)}")
    command = run_command(record)
    if command is not None:
        lines.append(command)
    st.code("\n".join(lines), language="bash")
    if command is None:
        st.info(t("download.no_run_command"), icon=":material/info:")


@st.cache_data(ttl=300, max_entries=16, show_spinner=False)
def _cached_run_spec(archive: str, image_tag: str | None, mtime: float) -> RunSpec | None:
    return pack_run_spec(archive=Path(archive), image_tag=image_tag)


def _beyond(record: PackRecord) -> None:
    """Profiles, SBOM, signature, registry, Kubernetes and compose: each rendered by core from the pack's own
    run spec (never rebuilt here)."""
    from core import manifests

    archive = Path(record.archive or "")
    mtime = archive.stat().st_mtime if archive.exists() else 0.0
    spec = _cached_run_spec(str(archive), record.image_tag, mtime)
    sbom = sbom_summary(archive=archive)
    st.subheader(t("download.more"))
    if spec is not None and spec.profiles:
        st.markdown(t("download.profiles", count=len(spec.profiles)))
        st.dataframe(
            [{t("download.col_profile"): p.name + (" ★" if p.name == spec.default_profile else ""),
              t("download.col_profile_for"): p.description} for p in spec.profiles],
            hide_index=True, width="stretch",
        )  # fmt: skip
        st.caption(t("download.profiles_hint"))
    if sbom is not None:
        st.markdown(t("download.sbom", name=names.sbom_name(archive.name), os=sbom.os_packages,
                      python=sbom.python_packages, files=sbom.model_files, license=sbom.license or "—"))  # fmt: skip
    if is_signed(archive=archive):
        st.markdown(t("download.signed", name=names.signature_name(names.checksum_name(archive.name))))
        verify = (f"bash {shlex.quote(load_script_name(archive))} --verify allowed_signers\n"
                  f"ezrunner verify {shlex.quote(archive.name)} --allowed-signers allowed_signers")  # fmt: skip
        st.code(verify, language="bash")
    with st.expander(t("download.registry_title"), icon=":material/cloud_upload:"):
        ref = st.text_input(t("download.registry_ref"), key="push_ref",
                            placeholder="registry.local:5000/llm/model:1").strip()  # fmt: skip
        insecure = st.checkbox(t("download.registry_insecure"), key="push_insecure")
        target = ref or "REGISTRY/REPOSITORY:TAG"
        push = f"ezrunner push {shlex.quote(str(archive))} {shlex.quote(target)}" + (" --insecure" if insecure else "")
        st.code(push, language="bash")
        st.caption(t("download.registry_hint"))
        if spec is None:
            st.info(t("download.no_spec"), icon=":material/info:")
            return
        image = ref or spec.image
        try:
            st.markdown(t("download.k8s"))
            st.code(manifests.kubernetes_manifests(spec=spec, image=image), language="yaml")
            st.markdown(t("download.compose"))
            st.code(manifests.compose_file(spec=spec, image=image), language="yaml")
        except EzRunnerError as error:
            st.warning(str(error), icon=":material/warning:")


def render() -> None:
    st.title(t("download.title"))
    history = History()
    record = _pick_record(history)
    if record is None:
        st.info(t("download.nothing"), icon=":material/info:")
        st.page_link(PAGE_BUILD, label=t("common.back_to_build"), icon=":material/arrow_back:")
        st.page_link(PAGE_HISTORY, label=t("common.to_history"), icon=":material/history:")
        return
    if record.outcome != "succeeded" or not record.archive:
        st.warning(t("download.not_finished", outcome=t(f"job_state.{record.outcome}")), icon=":material/warning:")
        return
    with st.container(border=True, key="download_summary"):
        st.subheader(record.model_id)
        size, took = st.columns(2)
        size.metric(t("download.size"), fmt_bytes(record.size))
        took.metric(t("download.duration"), fmt_duration(record.duration_s))
        st.markdown(t("download.image", tag=record.image_tag or "—"))
        st.markdown(t("download.sha256"))
        st.code(record.sha256 or "—", language=None)
        st.caption(t("download.on_disk", path=record.archive))
        if not Path(record.archive).exists() and not all(Path(p).exists() for p in record.parts):
            st.warning(t("download.missing_files"), icon=":material/warning:")
        if st.button(t("download.try_it"), key="try_it", icon=":material/chat:"):
            st.switch_page(PAGE_TRY, query_params={"record": record.id})
    _files(record)
    _commands(record)
    _beyond(record)


render()
