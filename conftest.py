"""Repository-wide pytest setup.

Its presence makes the repository root importable, so tests can use the `zoo` model builders.
The trtcheck pytest plugin itself (suites, `--trtcheck-*` options, the `tensorrt` marker) comes
from the installed package's `pytest11` entry point.
"""
