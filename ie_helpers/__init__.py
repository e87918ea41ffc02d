"""Shared helpers for the LoRA information-extraction replication notebooks."""

__version__ = "0.1.0"

from ie_helpers.errors import IEError  # noqa: E402

__all__ = ["IEError", "__version__"]
