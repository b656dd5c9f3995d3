"""`fastpage serve [MODEL] [flags]`: the OpenAI-compatible server (vLLM's `vllm serve`)."""

from __future__ import annotations

import argparse

from fastpage.entrypoints.openai.api_server import add_server_args, run_server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_tag", nargs="?", default=None,
                        help="the model (HF directory or .gguf file); same as --model")
    add_server_args(parser)


def run(args: argparse.Namespace) -> None:
    if args.model_tag is not None:
        args.model = args.model_tag
    run_server(args)
