"""Triton Python-backend entry point of ``goha_reconstruct``; the code lives in services/inference/triton_models.py.

The project must be importable inside the container (pip-installed, or its root in GOHA_PROJECT_ROOT /
PYTHONPATH). When this repository is used from a checkout, the checkout itself is found.
"""

import os
import pathlib
import sys

try:
    import services.inference.triton_models  # noqa: F401
except ImportError:
    sys.path.insert(
        0, os.environ.get("GOHA_PROJECT_ROOT") or str(pathlib.Path(__file__).resolve().parents[5])
    )

from services.inference.triton_models import ReconstructModel as TritonPythonModel  # noqa: E402

__all__ = ["TritonPythonModel"]
