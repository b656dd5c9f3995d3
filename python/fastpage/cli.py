"""`fastpage <subcommand>`: each subcommand is a module fastpage.commands.<name> with
add_arguments(parser) and run(args), imported only when it is used (the CLI starts fast)."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "serve": "start the OpenAI-compatible server",
    "chat": "chat with a model in the terminal",
    "generate": "complete a prompt",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="fastpage", description="fastpage: LLM inference and serving")
    subparsers = parser.add_subparsers(dest="subcommand", metavar="<subcommand>")
    for name, help_text in SUBCOMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # --help, or a usage error for an unknown subcommand
        parser.print_help()
        sys.exit(2)
    module = importlib.import_module(f"fastpage.commands.{argv[0]}")
    sub = argparse.ArgumentParser(prog=f"fastpage {argv[0]}", description=SUBCOMMANDS[argv[0]])
    module.add_arguments(sub)
    module.run(sub.parse_args(argv[1:]))


if __name__ == "__main__":
    main()
