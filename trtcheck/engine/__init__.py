"""Prebuilt TensorRT engines: plan files run as targets (`plan`) and the engine cache (`cache`).

Nothing here imports `tensorrt` at import time; the submodules are imported by name.
"""

from __future__ import annotations
