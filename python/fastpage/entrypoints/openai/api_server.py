"""`python -m fastpage.entrypoints.openai.api_server --model ...`: the OpenAI-compatible server."""

from __future__ import annotations

import argparse
import logging
import os
import sys

logger = logging.getLogger("fastpage.server")

API_KEY_ENV = "FASTPAGE_API_KEY"


def add_server_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from fastpage.engine_args import EngineArgs
    from fastpage.server.reasoning_parsers import REASONING_PARSERS
    from fastpage.server.tool_parsers import TOOL_PARSERS

    server = parser.add_argument_group("server")
    server.add_argument("--host", default=None, help="address to listen on (default: all)")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--served-model-name", nargs="+", default=None,
                        help="model name(s) clients use; the first one is reported in responses "
                             "(default: the --model value)")
    server.add_argument("--chat-template", default=None,
                        help="a chat template file, or the template itself; overrides the model's")
    server.add_argument("--api-key", default=None,
                        help=f"require this key (Authorization: Bearer) on every endpoint but /health "
                             f"(default: ${API_KEY_ENV})")
    server.add_argument("--protect-metrics", action="store_true",
                        help="require the API key on /metrics too")
    server.add_argument("--enable-auto-tool-choice", action="store_true",
                        help='allow tool_choice "auto" (needs --tool-call-parser)')
    # No argparse choices: a --tool-parser-plugin file can add names, checked once it has run.
    server.add_argument("--tool-call-parser", default=None, metavar="NAME",
                        help=f"how tool calls look in this model's output: {', '.join(sorted(TOOL_PARSERS))} "
                             "(hermes: Qwen2.5, Hermes), or a name a --tool-parser-plugin file registers")
    server.add_argument("--tool-parser-plugin", default=None, metavar="FILE",
                        help="a Python file that registers tool parsers with "
                             "fastpage.server.tool_parsers.ToolParserManager.register_module(name)")
    server.add_argument("--reasoning-parser", choices=sorted(REASONING_PARSERS), default=None,
                        help="split a reasoning model's thinking into message.reasoning_content "
                             "(deepseek_r1: DeepSeek-R1, QwQ; qwen3: Qwen3)")
    server.add_argument("--disable-log-stats", action="store_true", help="no periodic stats line")
    server.add_argument("--api-server-count", type=int, default=1,
                        help="API-server processes on the port (HTTP, SSE, detokenization), beside one engine "
                             "process; more than 1 spreads the front-end work over cores")
    server.add_argument("--uvicorn-log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug", "trace"])
    EngineArgs.add_cli_args(parser)
    return parser


def load_chat_template(value: str | None) -> str | None:
    """A path to a template file, or the template text itself (vLLM's rule)."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if any(c in value for c in "{}\n"):
        return value
    raise ValueError(f"--chat-template: {value!r} is neither a file nor a template")


def check_tool_parser_args(args: argparse.Namespace) -> None:
    """Runs the --tool-parser-plugin file, if any, then checks the --tool-call-parser name: ValueError
    naming the flag. Every server process calls it (the plugin runs once per process)."""
    from fastpage.server.tool_parsers import TOOL_PARSERS, import_tool_parser_plugin

    if args.tool_parser_plugin:
        import_tool_parser_plugin(args.tool_parser_plugin)
    if args.tool_call_parser is not None and args.tool_call_parser not in TOOL_PARSERS:
        raise ValueError(f"--tool-call-parser {args.tool_call_parser!r} is not a known parser; choose one of "
                         f"{', '.join(sorted(TOOL_PARSERS))} or register it with --tool-parser-plugin")
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise ValueError("--enable-auto-tool-choice needs --tool-call-parser")


def build_server(args: argparse.Namespace):
    """Loads the model and returns the FastAPI app (the engine loop starts with the app)."""
    from fastpage.engine_args import EngineArgs
    from fastpage.llm_engine import LLMEngine

    # The engine logs the KV-cache size and how many max-length requests fit.
    return build_app_for(args, LLMEngine.from_engine_args(EngineArgs.from_cli_args(args)))


def build_app_for(args: argparse.Namespace, llm):
    """The FastAPI app serving an LLMEngine (its loop local, or the engine process's: api_servers.py)."""
    from fastpage.server.app import build_app
    from fastpage.server.async_engine import AsyncEngine
    from fastpage.server.metrics import ServerMetrics
    from fastpage.server.reasoning_parsers import REASONING_PARSERS
    from fastpage.server.serving_base import ServingContext

    check_tool_parser_args(args)  # in each API-server process, where the parsers run
    reasoning_parser = REASONING_PARSERS[args.reasoning_parser] if args.reasoning_parser else None
    if reasoning_parser is not None:
        # A model that cannot end its thinking fails here; a structured output is enforced after it.
        llm.reasoning_end_token_ids = reasoning_parser.end_token_ids(llm.tokenizer)
    chat_template = load_chat_template(args.chat_template)
    served = args.served_model_name or [default_served_name(args.model, llm.model_name)]
    metrics = ServerMetrics(served[0])
    engine = AsyncEngine(llm, metrics, log_interval_s=float("inf") if args.disable_log_stats else 10.0)
    ctx = ServingContext(engine=engine, served_model_names=list(served), model_path=llm.model_name,
                         max_model_len=llm.max_model_len, vocab_size=llm.tokenizer.vocab_size,
                         chat_template=chat_template, enable_auto_tool_choice=args.enable_auto_tool_choice,
                         tool_call_parser=args.tool_call_parser, reasoning_parser=reasoning_parser)
    app = build_app(ctx, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                    protect_metrics=args.protect_metrics)
    logger.info("serving %s on http://%s:%d", ", ".join(served), args.host or "0.0.0.0", args.port)
    return app


def default_served_name(model_arg: str | None, model_path: str) -> str:
    """vLLM serves a model under the name it was given; the default model (no name given) is
    served under its file name, e.g. SmolLM2-135M-Instruct.Q4_1."""
    if model_arg is not None:
        return model_arg
    return os.path.basename(model_path).removesuffix(".gguf")


def run_server(args: argparse.Namespace) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s")
    if args.node_rank > 0:  # a worker node of a multi-node launch serves nothing itself
        from fastpage.distributed.launcher import run_worker_node
        from fastpage.engine_args import EngineArgs

        logger.info("node %d of %d: running its workers for node 0 at %s:%s", args.node_rank, args.nnodes,
                    args.distributed_master_addr, args.distributed_master_port)
        sys.exit(run_worker_node(EngineArgs.from_cli_args(args)))
    check_tool_parser_args(args)  # before the model loads: a bad flag fails at once
    if args.api_server_count > 1:
        from fastpage.server.api_servers import run_api_servers

        run_api_servers(args)
        return
    app = build_server(args)
    # uvloop and httptools: the event loop and HTTP parser in C, as vLLM runs them.
    uvicorn.run(app, host=args.host or "0.0.0.0", port=args.port, log_level=args.uvicorn_log_level,
                timeout_keep_alive=5, loop="uvloop", http="httptools")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastpage.entrypoints.openai.api_server",
                                     description="fastpage OpenAI-compatible server")
    run_server(add_server_args(parser).parse_args(argv))


if __name__ == "__main__":
    main()
