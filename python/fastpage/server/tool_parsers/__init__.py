"""Tool-call parsers, chosen with --tool-call-parser (vLLM's names); --tool-parser-plugin adds more."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys

from fastpage.server.tool_parsers.base import ExtractedToolCalls, ToolParser
from fastpage.server.tool_parsers.deepseek_v3 import DeepSeekV3ToolParser
from fastpage.server.tool_parsers.granite import GraniteToolParser
from fastpage.server.tool_parsers.hermes import HermesToolParser
from fastpage.server.tool_parsers.internlm import InternLMToolParser
from fastpage.server.tool_parsers.llama3_json import Llama3JsonToolParser
from fastpage.server.tool_parsers.mistral import MistralToolParser
from fastpage.server.tool_parsers.pythonic import PythonicToolParser
from fastpage.server.tool_parsers.qwen3_coder import Qwen3CoderToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    parser.name: parser for parser in (HermesToolParser, MistralToolParser, Llama3JsonToolParser,
                                       PythonicToolParser, Qwen3CoderToolParser, DeepSeekV3ToolParser,
                                       GraniteToolParser, InternLMToolParser)
}


class ToolParserManager:
    """vLLM's name for the registry, so that a plugin file registers its parser the same way:

        @ToolParserManager.register_module("my_format")
        class MyFormatToolParser(ToolParser): ...
    """

    @staticmethod
    def register_module(name: str | list[str]):
        names = [name] if isinstance(name, str) else list(name)

        def register(parser_class: type) -> type:
            if not (isinstance(parser_class, type) and issubclass(parser_class, ToolParser)):
                raise TypeError(f"register_module({name!r}): {parser_class!r} is not a ToolParser subclass")
            for each in names:
                TOOL_PARSERS[each] = parser_class
            return parser_class

        return register


def import_tool_parser_plugin(path: str) -> None:
    """Runs a --tool-parser-plugin file (its ToolParserManager.register_module calls add its parsers).
    Once per process: the module is kept in sys.modules, where dataclasses and pickling look for it."""
    if not os.path.isfile(path):
        raise ValueError(f"--tool-parser-plugin: no such file: {path!r}")
    real_path = os.path.realpath(path)
    module_name = "fastpage_tool_parser_plugin_" + hashlib.sha1(real_path.encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, real_path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--tool-parser-plugin: {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ValueError(f"--tool-parser-plugin {path!r} failed to load: {type(error).__name__}: {error}") from error


__all__ = ["TOOL_PARSERS", "ExtractedToolCalls", "ToolParser", "ToolParserManager", "import_tool_parser_plugin"]
