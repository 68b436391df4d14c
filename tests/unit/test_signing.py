"""Offline signatures: `pack --sign KEY` signs NAME.sha256 with an SSH key (ssh-keygen -Y sign); load.sh
--verify allowed_signers and `ezrunner verify` refuse an archive whose signature or checksum does not
match, before anything is loaded. Real ssh-keygen, a stand-in docker that records what it was asked."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import signing
from core.archive import names
from core.errors import ArtifactInvalidError, InvalidOptionsError, SignatureError
from ezrunner_ui.cli import main
from tests.unit.test_load_sh_args import Server, _stage, _stop_fake_server

SSH_KEYGEN = shutil.which("ssh-keygen") or ""
assert SSH_KEYGEN, "ssh-keygen is needed by these tests: apt-get install openssh-client"


def _key(folder: Path, name: str) -> Path:
    key = folder / name
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


def _allowed_signers(folder: Path, *entries: tuple[str, Path]) -> Path:
    """An allowed_signers file: one `IDENTITY KEYTYPE BASE64` line per trusted key (ssh-keygen(1))."""
    path = folder / "allowed_signers"
    lines = [f"{identity} {key.with_suffix('.pub').read_text().split(' ')[0]} "
             f"{key.with_suffix('.pub').read_text().split(' ')[1]}\n" for identity, key in entries]  # fmt: skip
    path.write_text("".join(lines))
    return path


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "keys"
    folder.mkdir()
    return _key(folder, "packer"), _key(folder, "stranger")


@pytest.fixture
def stick(tmp_path: Path) -> Iterator[Server]:
    server = _stage(tmp_path, split=False)
    yield server
    _stop_fake_server(server)


def _signed(stick: Server, key: Path) -> Path:
    return signing.sign_archive(archive=stick.folder / stick.archive, key=key)


def _loaded_anything(stick: Server) -> bool:
    return any(call.startswith("load") for call in stick.docker_calls())


def test_a_signed_archive_verifies_and_loads(stick: Server, keys: tuple[Path, Path], tmp_path: Path) -> None:
    packer, _ = keys
    signature = _signed(stick, packer)
    assert signature == names.signature_path(stick.folder / stick.archive)
    assert signature.read_text().startswith("-----BEGIN SSH SIGNATURE-----")
    allowed = _allowed_signers(tmp_path, ("packer@example.org", packer))
    result = stick.load("--verify", str(allowed), "--no-start")
    assert result.returncode == 0, result.stderr
    assert "Signature: good, made by packer@example.org" in result.stdout
    assert stick.docker_calls().count("load -i m.tar") == 1
    verified = signing.verify(archive=stick.folder / stick.archive, allowed_signers=allowed)
    assert verified.signers == ("packer@example.org",)
    assert verified.sha256 == stick.whole_sha256


def test_one_byte_changed_in_the_tar_fails_and_loads_nothing(
    stick: Server, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    packer, _ = keys
    _signed(stick, packer)
    allowed = _allowed_signers(tmp_path, ("packer@example.org", packer))
    archive = stick.folder / stick.archive
    data = bytearray(archive.read_bytes())
    data[100] ^= 0x01
    archive.write_bytes(bytes(data))
    result = stick.load("--verify", str(allowed), "--no-start")
    assert result.returncode == 1
    assert "m.tar is damaged or incomplete" in result.stderr
    assert not _loaded_anything(stick)
    with pytest.raises(ArtifactInvalidError, match="does not match its checksum"):
        signing.verify(archive=archive, allowed_signers=allowed)


def test_a_signature_by_another_key_fails_and_loads_nothing(
    stick: Server, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    packer, stranger = keys
    _signed(stick, stranger)
    allowed = _allowed_signers(tmp_path, ("packer@example.org", packer))
    result = stick.load("--verify", str(allowed), "--no-start")
    assert result.returncode == 1
    assert "was not made by any key in" in result.stderr
    assert "Nothing was loaded" in result.stderr
    assert not _loaded_anything(stick)
    with pytest.raises(SignatureError, match="was not made by any key"):
        signing.verify(archive=stick.folder / stick.archive, allowed_signers=allowed)


def test_a_replaced_archive_with_a_matching_checksum_file_fails_the_signature(
    stick: Server, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """Whoever swaps the tar and writes a new NAME.sha256 for it still cannot make the signature match."""
    packer, _ = keys
    _signed(stick, packer)
    allowed = _allowed_signers(tmp_path, ("packer@example.org", packer))
    archive = stick.folder / stick.archive
    archive.write_bytes(b"another image entirely")
    completed = subprocess.run(
        ["sha256sum", archive.name], cwd=stick.folder, capture_output=True, text=True, check=True
    )
    names.checksum_path(archive).write_text(completed.stdout)
    result = stick.load("--verify", str(allowed), "--no-start")
    assert result.returncode == 1
    assert "does not match m.tar.sha256" in result.stderr
    assert not _loaded_anything(stick)
    with pytest.raises(SignatureError, match=r"does not match m\.tar\.sha256"):
        signing.verify(archive=archive, allowed_signers=allowed)


def test_a_signature_present_but_not_checked_is_said(stick: Server, keys: tuple[Path, Path]) -> None:
    _signed(stick, keys[0])
    result = stick.load("--no-start")
    assert result.returncode == 0, result.stderr
    assert "m.tar.sha256.sig was NOT checked" in result.stdout
    unsigned = stick.folder / names.signature_name(stick.archive)
    unsigned.unlink()
    assert "NOT checked" not in stick.load("--no-start").stdout


def test_verify_without_a_signature_file_is_refused(stick: Server, keys: tuple[Path, Path], tmp_path: Path) -> None:
    allowed = _allowed_signers(tmp_path, ("packer@example.org", keys[0]))
    result = stick.load("--verify", str(allowed), "--no-start")
    assert result.returncode == 1
    assert "m.tar.sha256.sig is missing" in result.stderr
    assert not _loaded_anything(stick)
    missing = stick.load("--verify", str(tmp_path / "nope"), "--no-start")
    assert missing.returncode == 2 and "no such allowed signers file" in missing.stderr
    with pytest.raises(SignatureError, match=r"sha256\.sig is missing"):
        signing.verify(archive=stick.folder / stick.archive, allowed_signers=allowed)


def test_signing_with_a_missing_key_names_the_flag(stick: Server, tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionsError, match="does not exist") as raised:
        signing.sign_archive(archive=stick.folder / stick.archive, key=tmp_path / "no-such-key")
    assert raised.value.field == "sign_key"


def test_signing_with_a_file_that_is_no_key_fails_clearly(stick: Server, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-key"
    bogus.write_text("hello\n")
    with pytest.raises(InvalidOptionsError, match=r"ssh-keygen could not sign m\.tar\.sha256"):
        signing.sign_archive(archive=stick.folder / stick.archive, key=bogus)
    assert not names.signature_path(stick.folder / stick.archive).exists()


def test_ezrunner_verify_command(
    stick: Server, keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    packer, stranger = keys
    _signed(stick, packer)
    archive = str(stick.folder / stick.archive)
    good = _allowed_signers(tmp_path, ("packer@example.org", packer))
    assert main(["verify", archive, "--allowed-signers", str(good), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["signers"] == ["packer@example.org"] and answer["sha256"] == stick.whole_sha256
    assert main(["verify", archive]) == 0
    assert "was NOT checked" in capsys.readouterr().out
    other = tmp_path / "other"
    other.mkdir()
    only_stranger = _allowed_signers(other, ("stranger@example.org", stranger))
    assert main(["verify", archive, "--allowed-signers", str(only_stranger)]) == 2
    assert "was not made by any key" in capsys.readouterr().err


def test_the_pack_summary_lists_the_sbom_and_the_signature_and_how_to_verify(tmp_path: Path) -> None:
    from dataclasses import replace

    from ezrunner_ui.cli.pack import summary, written_files
    from tests.unit.test_cli_housekeeping import _artifact

    plain = _artifact(tmp_path, compression="none", parts=1)
    sbom, signature = names.sbom_path(plain.archive), names.signature_path(plain.archive)
    for path in (sbom, signature):
        path.write_text("x")
    artifact = replace(plain, sbom=sbom, signature=signature)
    assert [p.name for p in written_files(artifact)] == [
        "m.tar", "m.tar.sha256", "m.tar.cdx.json", "m.tar.sha256.sig", "load.sh"
    ]  # fmt: skip
    assert any("load.sh --verify allowed_signers" in line for line in summary(artifact))
    assert not any("--verify" in line for line in summary(plain))
