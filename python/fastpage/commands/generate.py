"""`fastpage generate "prompt"`: one completion, streamed to stdout.

The prompt is sent as is (a plain completion), or through the model's chat template as one user
message with --chat or --system. Without a prompt argument, the prompt is read from stdin.
"""

from __future__ import annotations

import argparse
import sys

from fastpage.commands.local_generation import (add_generation_arguments, build_engine,
                                                sampling_params_from_args, stream_completion)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", default=None, help="the prompt (default: read stdin)")
    parser.add_argument("--chat", action="store_true",
                        help="send the prompt as a user message through the chat template")
    add_generation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    prompt_text = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt_text:
        raise ValueError("prompt must not be empty (give it as an argument or on stdin).")
    engine = build_engine(args)
    params = sampling_params_from_args(args, engine)
    if args.chat or args.system is not None:
        messages = [{"role": "system", "content": args.system}] if args.system is not None else []
        messages.append({"role": "user", "content": prompt_text})
        prompt = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    else:
        prompt = prompt_text
    stream_completion(engine, "generate-0", prompt, params)
    sys.stdout.write("\n")
    return 0
