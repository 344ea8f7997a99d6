"""Repository-wide pytest setup: makes `zoo` importable and gates tests that need TensorRT.

Tests marked `tensorrt` skip where TensorRT cannot be imported, with that reason. A GPU gate
passes `--trtcheck-require-backend trt` so that a missing TensorRT fails those tests instead:
a gate must not pass by skipping.
"""

from __future__ import annotations

import pytest

from trtcheck.backends import TRT_INSTALL_HINT, tensorrt_usable


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--trtcheck-require-backend", action="append", default=[], choices=["trt"],
        help="make tests of this backend fail, not skip, when it is unavailable",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if tensorrt_usable():
        return
    required = "trt" in config.getoption("--trtcheck-require-backend")
    for item in items:
        if "tensorrt" not in item.keywords:
            continue
        if required:
            item.add_marker(pytest.mark.usefixtures("_tensorrt_required"))
        else:
            item.add_marker(pytest.mark.skip(
                reason=f"needs TensorRT and an NVIDIA GPU, not available here; {TRT_INSTALL_HINT}"))


@pytest.fixture
def _tensorrt_required() -> None:
    pytest.fail("--trtcheck-require-backend trt: TensorRT is not importable on this machine; "
                + TRT_INSTALL_HINT, pytrace=False)
