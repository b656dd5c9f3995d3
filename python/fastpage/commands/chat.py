"""`fastpage chat`: an interactive conversation in the terminal.

Each line read is a user message; the reply streams as it is generated, and the whole conversation
goes back through the chat template on the next turn. `/exit` (or `/quit`, or end of input) quits,
`/clear` starts over, Ctrl-C stops the reply being written.
"""

from __future__ import annotations

import argparse
import itertools
import sys

from fastpage.commands.local_generation import (add_generation_arguments, build_engine,
                                                sampling_params_from_args, stream_completion)

EXIT_COMMANDS = ("/exit", "/quit")
CLEAR_COMMAND = "/clear"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_generation_arguments(parser)


def _read_line(interactive: bool) -> str | None:
    """The next user line, or None at end of input."""
    try:
        return input("> ") if interactive else sys.stdin.readline() or None
    except (EOFError, KeyboardInterrupt):
        return None


def run(args: argparse.Namespace) -> int:
    engine = build_engine(args)
    params = sampling_params_from_args(args, engine)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"fastpage chat on {engine.model_name} ({', '.join(EXIT_COMMANDS)} or Ctrl-D to quit, "
              f"{CLEAR_COMMAND} to start over)", file=sys.stderr)
    start = [{"role": "system", "content": args.system}] if args.system is not None else []
    messages = list(start)
    for turn in itertools.count():
        line = _read_line(interactive)
        if line is None:
            break
        line = line.rstrip("\n")
        if line.strip() in EXIT_COMMANDS:
            break
        if line.strip() == CLEAR_COMMAND:
            messages = list(start)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        prompt = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        try:
            reply = stream_completion(engine, f"chat-{turn}", prompt, params)
        except KeyboardInterrupt:
            print("\n[stopped]", file=sys.stderr)
            messages.pop()
            continue
        except ValueError as error:  # e.g. the conversation no longer fits the context
            print(f"\nerror: {error}", file=sys.stderr)
            messages.pop()
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": reply})
    return 0
