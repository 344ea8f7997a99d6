"""What trtcheck is called on PyPI, how to install it, and which versions are installed.

The import package and the command are `trtcheck`, but the name `trtcheck` on PyPI belongs to
another author's project, so this one is distributed as `onnx-trtcheck`: every hint that says
how to install trtcheck takes its command from here. No heavy imports: `--version` must stay
cheap and work when onnx or ONNX Runtime are broken.
"""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

from trtcheck import __version__

DISTRIBUTION = "onnx-trtcheck"

# The libraries that decide a verdict, with the distribution names that provide each module.
_LIBRARIES = {
    "polygraphy": ("polygraphy",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml",
                    "onnxruntime-openvino"),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11",
                 "tensorrt-cu13-bindings", "tensorrt-cu12-bindings"),
}


def install_command(*extras: str) -> str:
    """The pip command that installs this project, with `extras` (e.g. "trt")."""
    if not extras:
        return f"pip install {DISTRIBUTION}"
    return f"pip install '{DISTRIBUTION}[{','.join(extras)}]'"


def _library_version(module: str, distributions: tuple[str, ...]) -> str:
    from importlib import metadata  # 10 ms to import: for `--version` only

    if importlib.util.find_spec(module) is None:
        return "not installed"
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "installed (version unknown)"


def version_text() -> str:
    """`trtcheck --version`: this distribution, where it runs from, and the libraries' versions.

    Versions come from the installed packages' metadata, so nothing is imported.
    """
    lines = [f"{DISTRIBUTION} {__version__} from {Path(__file__).parent} "
             f"(Python {platform.python_version()})"]
    lines += [f"{module} {_library_version(module, names)}" for module, names in _LIBRARIES.items()]
    return "\n".join(lines)
