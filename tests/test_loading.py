import pytest

from prunelab.models.loading import resolve_source
from tiny_models import save_tiny_folder


def test_sources_are_classified(tmp_path):
    folder = save_tiny_folder("llama", tmp_path / "m")
    src = resolve_source(str(folder))
    assert src.kind == "folder" and len(src.identity["config_sha256"]) == 64
    assert resolve_source("HuggingFaceTB/SmolLM2-135M").kind == "hub"
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        resolve_source(str(tmp_path / "x.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_source(str(tmp_path / "empty"))
