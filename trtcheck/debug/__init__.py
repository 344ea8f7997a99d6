"""Debugging a failing comparison: bisection to the culprit, range audit, precision fix, repro."""

from trtcheck.debug.localize import Localization, audit_model, localize, localize_comparison

__all__ = ["Localization", "audit_model", "localize", "localize_comparison"]
