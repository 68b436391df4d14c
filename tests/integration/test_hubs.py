"""The real huggingface_hub and modelscope clients against the loopback fake hub."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants
from safetensors import safe_open

from core import hubs
from core.errors import (
    CancelledError,
    ChecksumMismatchError,
    GatedModelError,
    HubUnreachableError,
    ModelNotFoundError,
    NoSafetensorsError,
    RevisionNotFoundError,
)
from core.events import Event
from core.hubs.base import ModelInfo, SearchFilters, WeightStats
from core.refs import parse_ref
from tests.fixtures.fake_hub import FakeHub, closed_port_url
from tests.fixtures.hub_plugin import (
    FAKE_HUB_TOKEN,
    HF_BIN_ONLY,
    HF_GATED,
    HF_MESSY,
    HF_ONLY,
    HF_SHARDED,
    HF_SINGLE,
    MS_GATED,
    MS_SHARDED,
    MS_SINGLE,
)

WIDTH = {"BF16": 2, "F16": 2, "F32": 4}


def truth(folder: Path) -> WeightStats:
    """What the tiny model really holds, read with the safetensors library (not our header parser)."""
    params: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    count = lm_head = 0
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = handle.get_tensor(name)
                dtype = {"torch.bfloat16": "BF16", "torch.float16": "F16", "torch.float32": "F32"}[str(tensor.dtype)]
                params[dtype] = params.get(dtype, 0) + tensor.numel()
                nbytes[dtype] = nbytes.get(dtype, 0) + tensor.numel() * tensor.element_size()
                count += 1
                lm_head += tensor.numel() * tensor.element_size() if name == "lm_head.weight" else 0
    return WeightStats(parameters_by_dtype=params, bytes_by_dtype=nbytes, tensor_count=count, lm_head_bytes=lm_head)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_matches_folder(info: ModelInfo, folder: Path) -> None:
    on_disk = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert [f.path for f in info.files] == on_disk
    for f in info.files:
        assert f.size == (folder / f.path).stat().st_size
        if f.path.endswith(".safetensors"):
            assert f.sha256 == sha256(folder / f.path)
    assert info.weights == truth(folder)
    assert info.weights.lm_head_bytes > 0
    assert info.architecture == "LlamaForCausalLM"
    assert info.context_length == 2048
    assert info.config["hidden_size"] == 64


def assert_only_headers_were_read(hub: FakeHub, folder: Path) -> None:
    for shard in folder.glob("*.safetensors"):
        requests = hub.file_requests(shard.name)
        assert requests, f"{shard.name} header was never read"
        assert all(r.range and r.range.startswith("bytes=") for r in requests), requests
        assert hub.bytes_served(shard.name) < shard.stat().st_size


def download_events(events: list[Event], total: int) -> list[int]:
    dones = [e.done for e in events if e.stage == "download"]
    assert dones, "no download progress"
    assert dones == sorted(dones), "download progress went backwards"
    assert all(e.total == total and e.unit == "B" for e in events if e.stage == "download")
    assert dones[-1] == total
    return dones


# search


def test_search_hugging_face_reports_parameters_and_size(fake_hub: FakeHub, tiny_model_dir: Path) -> None:
    found = {m.id: m for m in hubs.search(query="tiny-llama", source="hf")}
    assert {HF_SINGLE, HF_SHARDED, HF_MESSY, HF_ONLY, HF_GATED} <= set(found)
    single = found[HF_SINGLE]
    stats = truth(tiny_model_dir)
    assert single.source == "hf"
    assert (single.downloads, single.likes, single.pipeline_tag) == (300, 7, "text-generation")
    assert single.parameters == stats.total_parameters
    assert single.size_bytes == stats.total_bytes
    assert single.license == "apache-2.0"
    assert single.updated is not None
    assert found[HF_GATED].gated and not single.gated
    ordered = [m.downloads or 0 for m in found.values()]
    assert ordered == sorted(ordered, reverse=True)


def test_search_modelscope_and_both(fake_hub: FakeHub) -> None:
    ms = {m.id: m for m in hubs.search(query="tiny-llama", source="ms")}
    assert set(ms) == {MS_SINGLE, MS_SHARDED, MS_GATED}
    assert ms[MS_SINGLE].source == "ms" and ms[MS_SINGLE].downloads == 30 and ms[MS_SINGLE].likes == 2
    assert ms[MS_SINGLE].size_bytes and ms[MS_GATED].gated
    both = hubs.search(query="sharded", source="both", limit=5)
    assert sorted((m.source, m.id) for m in both) == [("hf", HF_SHARDED), ("ms", MS_SHARDED)]


def test_search_limit_and_task_filter(fake_hub: FakeHub) -> None:
    assert len(hubs.search(query="tiny", source="hf", limit=2)) == 2
    assert len(hubs.search(query="tiny", source="ms", limit=2)) == 2
    none = SearchFilters(task="text-to-image")
    assert hubs.search(query="tiny", source="hf", filters=none) == []
    assert hubs.search(query="tiny", source="ms", filters=none) == []


@pytest.mark.slow  # the Hugging Face client retries a dead endpoint for ~20 s per search
def test_search_both_survives_one_unreachable_hub(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    assert {m.source for m in hubs.search(query="tiny", source="both")} == {"ms"}
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", closed_port_url())
    with pytest.raises(HubUnreachableError, match="cannot be reached"):
        hubs.search(query="tiny", source="both")


# inspect


def test_inspect_hugging_face_pins_commit_and_reads_only_headers(fake_hub: FakeHub, tiny_model_dir: Path) -> None:
    info = hubs.inspect(ref=f"hf:{HF_SINGLE}")
    assert info.ref == parse_ref(f"hf:{HF_SINGLE}")
    assert (info.revision, info.commit) == ("main", fake_hub.repos[("hf", HF_SINGLE)].commit)
    assert info.answered_by == "Hugging Face"
    assert info.license == "apache-2.0" and info.gated is False
    assert info.name == "tiny-llama"
    assert_matches_folder(info, tiny_model_dir)
    as_json = json.loads(json.dumps(hubs.model_to_dict(info)))
    assert as_json["ref"] == f"hf:{HF_SINGLE}" and as_json["commit"] == info.commit
    assert as_json["weights"]["total_parameters"] == info.weights.total_parameters
    assert [f["path"] for f in as_json["files"]] == [f.path for f in info.files]
    assert_only_headers_were_read(fake_hub, tiny_model_dir)


def test_inspect_hugging_face_sharded_uses_the_index(fake_hub: FakeHub, tiny_sharded_model_dir: Path) -> None:
    info = hubs.inspect(ref=f"hf:{HF_SHARDED}")
    assert_matches_folder(info, tiny_sharded_model_dir)
    assert "model.safetensors.index.json" in [f.path for f in info.files]
    assert_only_headers_were_read(fake_hub, tiny_sharded_model_dir)


def test_inspect_modelscope_sharded(fake_hub: FakeHub, tiny_sharded_model_dir: Path) -> None:
    info = hubs.inspect(ref=f"ms:{MS_SHARDED}")
    assert info.answered_by == "ModelScope" and info.ref.source == "ms"
    assert info.revision == "master"
    assert info.commit == fake_hub.repos[("ms", MS_SHARDED)].commit
    assert_matches_folder(info, tiny_sharded_model_dir)
    for f in info.files:  # ModelScope lists a sha256 for every file
        assert f.sha256 == sha256(tiny_sharded_model_dir / f.path)
    assert_only_headers_were_read(fake_hub, tiny_sharded_model_dir)


def test_inspect_packs_only_what_from_pretrained_needs(fake_hub: FakeHub, tiny_sharded_model_dir: Path) -> None:
    info = hubs.inspect(ref=f"hf:{HF_MESSY}")
    paths = [f.path for f in info.files]
    expected = sorted([p.name for p in tiny_sharded_model_dir.iterdir()] + ["LICENSE", "README.md"])
    assert paths == expected
    assert info.weights == truth(tiny_sharded_model_dir)  # consolidated.safetensors is not counted twice
    assert not fake_hub.file_requests("consolidated.safetensors")


def test_inspect_revision_by_tag_and_commit(fake_hub: FakeHub) -> None:
    commit = fake_hub.repos[("hf", HF_SINGLE)].commit
    assert hubs.inspect(ref=f"hf:{HF_SINGLE}", revision=commit).commit == commit
    with pytest.raises(RevisionNotFoundError, match="no-such-branch"):
        hubs.inspect(ref=f"hf:{HF_SINGLE}", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError, match="master"):
        hubs.inspect(ref=f"ms:{MS_SINGLE}", revision="no-such-branch")


def test_bare_id_resolves_on_modelscope_first_then_hugging_face(fake_hub: FakeHub) -> None:
    on_ms = hubs.inspect(ref=MS_SINGLE)
    assert (on_ms.answered_by, on_ms.ref.source) == ("ModelScope", "ms")
    on_hf = hubs.inspect(ref=HF_ONLY)
    assert (on_hf.answered_by, on_hf.ref.source, on_hf.revision) == ("Hugging Face", "hf", "main")
    assert fake_hub.requests(path_contains=f"/openapi/v1/models/{HF_ONLY}")  # ModelScope was asked first


def test_unknown_models_say_what_to_try(fake_hub: FakeHub) -> None:
    with pytest.raises(ModelNotFoundError, match="ms:") as on_hf:
        hubs.inspect(ref="hf:nobody/nothing")
    assert "spelling" in str(on_hf.value)
    with pytest.raises(ModelNotFoundError, match="hf:"):
        hubs.inspect(ref="ms:nobody/nothing")
    with pytest.raises(ModelNotFoundError, match="neither on ModelScope nor on Hugging Face"):
        hubs.inspect(ref="nobody/nothing")


def test_gated_without_token_says_accept_licence_then_token(fake_hub: FakeHub) -> None:
    with pytest.raises(GatedModelError) as caught:
        hubs.inspect(ref=f"hf:{HF_GATED}")
    assert "licence" in str(caught.value) and "HF_TOKEN" in str(caught.value)
    with pytest.raises(GatedModelError):
        hubs.inspect(ref=f"hf:{HF_GATED}", token="wrong-token")
    with pytest.raises(GatedModelError, match="MODELSCOPE_API_TOKEN"):
        hubs.inspect(ref=f"ms:{MS_GATED}")


def test_gated_with_token_inspects_and_downloads(fake_hub: FakeHub, tmp_path: Path, tiny_model_dir: Path) -> None:
    info = hubs.inspect(ref=f"hf:{HF_GATED}", token=FAKE_HUB_TOKEN)
    assert info.gated and info.license == "llama3.1"
    with pytest.raises(GatedModelError):
        hubs.download(model=info, cache_dir=tmp_path / "no-token")
    folder = hubs.download(model=info, token=FAKE_HUB_TOKEN, cache_dir=tmp_path / "hf")
    assert sha256(folder / "model.safetensors") == sha256(tiny_model_dir / "model.safetensors")
    ms_info = hubs.inspect(ref=f"ms:{MS_GATED}", token=FAKE_HUB_TOKEN)
    assert ms_info.gated
    assert hubs.download(model=ms_info, token=FAKE_HUB_TOKEN, cache_dir=tmp_path / "ms").is_dir()


def test_token_from_environment(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", FAKE_HUB_TOKEN)
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", FAKE_HUB_TOKEN)
    assert hubs.inspect(ref=f"hf:{HF_GATED}").gated
    assert hubs.inspect(ref=f"ms:{MS_GATED}").gated


def test_repo_without_safetensors(fake_hub: FakeHub) -> None:
    with pytest.raises(NoSafetensorsError, match=r"\.bin") as caught:
        hubs.inspect(ref=f"hf:{HF_BIN_ONLY}")
    assert "safetensors variant" in str(caught.value)


@pytest.mark.parametrize("ref", [f"hf:{HF_SINGLE}", f"ms:{MS_SINGLE}", MS_SINGLE])
def test_unreachable_hub_suggests_a_mirror_or_the_other_hub(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, ref: str
) -> None:
    nowhere = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", nowhere)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", nowhere)
    started = time.monotonic()
    with pytest.raises(HubUnreachableError) as caught:
        hubs.inspect(ref=ref)
    assert time.monotonic() - started < 60
    text = str(caught.value)
    assert nowhere in text
    assert ("hf-mirror.com" in text and "ms:" in text) or ("MODELSCOPE_ENDPOINT" in text and "hf:" in text)


# download


@pytest.mark.parametrize(
    ("ref", "folder_fixture"),
    [(f"hf:{HF_SHARDED}", "tiny_sharded_model_dir"), (f"ms:{MS_SHARDED}", "tiny_sharded_model_dir")],
)
def test_download_fetches_exactly_the_packed_files_with_progress(
    fake_hub: FakeHub, tmp_path: Path, ref: str, folder_fixture: str, request: pytest.FixtureRequest
) -> None:
    source: Path = request.getfixturevalue(folder_fixture)
    info = hubs.inspect(ref=ref)
    events: list[Event] = []
    folder = hubs.download(model=info, on_event=events.append, cache_dir=tmp_path)
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == [f.path for f in info.files]
    for f in info.files:
        assert sha256(folder / f.path) == sha256(source / f.path)
    download_events(events, info.total_bytes)
    verify = [e for e in events if e.stage == "verify"]
    assert verify and verify[-1].done == verify[-1].total
    # a second download is served from the cache: no file is fetched again
    fake_hub.clear_log()
    assert hubs.download(model=info, cache_dir=tmp_path) == folder
    assert not [r for r in fake_hub.log if r.method == "GET" and r.body_bytes and r.path.endswith(".safetensors")]
    assert not any(fake_hub.file_requests(f.path) and fake_hub.bytes_served(f.path) for f in info.files)


@pytest.mark.parametrize("ref", [f"hf:{HF_SINGLE}", f"ms:{MS_SINGLE}"])
def test_download_resumes_after_a_dropped_connection(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ref: str
) -> None:
    chunk = 16 * 1024
    # huggingface_hub keeps whole 10 MiB chunks only; smaller chunks let a tiny file show the resume
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", chunk)
    info = hubs.inspect(ref=ref)
    size = next(f.size for f in info.files if f.path == "model.safetensors")
    cut = 5 * chunk
    fake_hub.clear_log()
    fake_hub.interrupt_next_download("model.safetensors", after_bytes=cut)
    events: list[Event] = []
    folder = hubs.download(model=info, on_event=events.append, cache_dir=tmp_path)
    gets = [r for r in fake_hub.file_requests("model.safetensors") if r.method == "GET"]
    assert [(r.range, r.status, r.body_bytes) for r in gets] == [
        (None, 200, cut),
        (f"bytes={cut}-", 206, size - cut),
    ]
    assert sha256(folder / "model.safetensors") == next(f.sha256 for f in info.files if f.path == "model.safetensors")
    download_events(events, info.total_bytes)


def test_modelscope_download_resumes_a_partial_file_from_an_earlier_run(fake_hub: FakeHub, tmp_path: Path) -> None:
    info = hubs.inspect(ref=f"ms:{MS_SINGLE}")
    folder = hubs.download(model=info, cache_dir=tmp_path)
    target = folder / "model.safetensors"
    data = target.read_bytes()
    half = len(data) // 2
    target.unlink()
    target.with_name(target.name + ".incomplete").write_bytes(data[:half])
    fake_hub.clear_log()
    events: list[Event] = []
    again = hubs.download(model=info, on_event=events.append, cache_dir=tmp_path)
    assert (again / "model.safetensors").read_bytes() == data
    gets = fake_hub.file_requests("model.safetensors")
    assert [(r.range, r.status, r.body_bytes) for r in gets] == [(f"bytes={half}-", 206, len(data) - half)]
    download_events(events, info.total_bytes)


@pytest.mark.parametrize("ref", [f"hf:{HF_SINGLE}", f"ms:{MS_SINGLE}"])
def test_corrupted_file_is_named_and_fetched_fresh_next_time(fake_hub: FakeHub, tmp_path: Path, ref: str) -> None:
    info = hubs.inspect(ref=ref)
    folder = hubs.download(model=info, cache_dir=tmp_path)
    target = (folder / "model.safetensors").resolve()
    good = target.read_bytes()
    target.write_bytes(good[:-4] + b"evil")  # same size, different bytes
    if ref.startswith("ms:"):
        # ModelScope's client checks its cache against the listing's sha256 itself and refetches
        hubs.download(model=info, cache_dir=tmp_path)
        assert target.read_bytes() == good
        return
    with pytest.raises(ChecksumMismatchError) as caught:
        hubs.download(model=info, cache_dir=tmp_path)
    assert "model.safetensors" in str(caught.value) and "run the download again" in str(caught.value)
    assert (hubs.download(model=info, cache_dir=tmp_path) / "model.safetensors").read_bytes() == good


@pytest.mark.parametrize("ref", [f"hf:{HF_SHARDED}", f"ms:{MS_SHARDED}"])
def test_cancel_stops_the_download(fake_hub: FakeHub, tmp_path: Path, ref: str) -> None:
    info = hubs.inspect(ref=ref)
    fake_hub.clear_log()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        hubs.download(model=info, cancel=cancel, cache_dir=tmp_path)
    assert not fake_hub.log  # cancelled before the first request

    cancel.clear()
    seen: list[Event] = []

    def cancel_on_first_bytes(event: Event) -> None:
        seen.append(event)
        cancel.set()

    with pytest.raises(CancelledError):
        hubs.download(model=info, on_event=cancel_on_first_bytes, cancel=cancel, cache_dir=tmp_path)
    assert len([e for e in seen if e.stage == "download"]) == 1
    assert not [e for e in seen if e.stage == "verify"]
    # and it resumes: a later download completes
    assert hubs.download(model=info, cache_dir=tmp_path).is_dir()


# local folder


def test_local_folder_needs_no_network_and_no_weight_reads(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_sharded_model_dir: Path
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", closed_port_url())
    folder = tmp_path / "my-model"
    folder.mkdir()
    for source in tiny_sharded_model_dir.iterdir():
        (folder / source.name).write_bytes(source.read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 64)
    info = hubs.inspect(ref=str(folder))
    assert (info.answered_by, info.ref.source, info.repo_id) == ("local folder", "local", "my-model")
    assert info.revision == "local"
    assert [f.path for f in info.files] == sorted(p.name for p in tiny_sharded_model_dir.iterdir())
    assert info.weights == truth(tiny_sharded_model_dir)
    assert not fake_hub.log
    assert hubs.download(model=info) == folder.resolve()
    assert hubs.inspect(ref=str(folder)).commit == info.commit
    shard = folder / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes())  # same bytes, new mtime: a different "commit"
    assert hubs.inspect(ref=str(folder)).commit != info.commit
