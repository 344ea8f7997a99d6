from __future__ import annotations

from pathlib import Path

from zoo.build import main


def test_bundled_models_rebuild_bit_for_bit(tmp_path):
    assert main([str(tmp_path)]) == 0
    bundled = Path(__file__).parents[1] / "zoo"
    for built in tmp_path.glob("*.onnx"):
        assert built.read_bytes() == (bundled / built.name).read_bytes(), built.name
