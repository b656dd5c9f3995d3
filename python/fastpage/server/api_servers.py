"""`fastpage serve --api-server-count N` (vLLM's flag): N API-server processes on one port, one engine
process. The HTTP work (parsing, SSE chunks, writes) and the output processing of a request
(detokenization, stop strings) run in the API server that took the request, so they spread over N
cores instead of sharing one GIL; the engine process steps and routes each step's rows.

This process is the engine process: it loads the model, opens the listening socket, starts the API
servers (`python -m fastpage.server.api_servers SPEC_JSON`, each inheriting the socket), and serves
their commands (engine_core.py) until SIGINT/SIGTERM or until an API server exits; then it stops them
all. Each API server's /metrics holds the engine-wide series (from the engine's stats) and the latency
histograms of its own requests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import types

logger = logging.getLogger("fastpage.server")


def run_api_servers(args: argparse.Namespace) -> None:
    """The engine process; every API server gets the same parsed flags."""
    from fastpage.engine_args import EngineArgs
    from fastpage.llm_engine import LLMEngine
    from fastpage.server.engine_core import serve_engine_core

    num_servers = args.api_server_count
    llm = LLMEngine.from_engine_args(EngineArgs.from_cli_args(args))
    listener = socket.create_server((args.host or "0.0.0.0", args.port), backlog=4096, reuse_port=False)
    listener.set_inheritable(True)
    workdir = tempfile.mkdtemp(prefix="fastpage-ipc-")
    command_address = f"ipc://{workdir}/commands"
    output_addresses = [f"ipc://{workdir}/outputs-{k}" for k in range(num_servers)]
    tokenizer = llm.tokenizer
    servers = []
    for k in range(num_servers):
        spec = dict(server_index=k, parent_pid=os.getpid(), listen_fd=listener.fileno(), command_address=command_address,
                    output_address=output_addresses[k], args=vars(args), model_name=llm.model_name,
                    tokenizer_source=llm.tokenizer_source, eos_token_ids=list(tokenizer.eos_token_ids),
                    chat_template=tokenizer.chat_template, max_model_len=llm.max_model_len,
                    vocab_size=llm.model_config.vocab_size, max_logprobs=llm.max_logprobs,
                    max_num_seqs=llm.max_num_seqs, generation_defaults=llm.generation_defaults,
                    async_scheduling=llm.engine.async_scheduling)
        servers.append(subprocess.Popen([sys.executable, "-m", "fastpage.server.api_servers", json.dumps(spec)],
                                        pass_fds=[listener.fileno()]))
    stopping = threading.Event()

    def stop(*_):
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=_watch_servers, args=(servers, stopping), name="fastpage-server-watch",
                     daemon=True).start()
    logger.info("engine process: %d API servers on http://%s:%d", num_servers, args.host or "0.0.0.0", args.port)
    try:
        serve_engine_core(llm.engine, num_servers, command_address, output_addresses, stopping)
    finally:
        for server in servers:
            if server.poll() is None:
                server.terminate()
        for server in servers:
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        listener.close()
        llm.shutdown()


def _watch_servers(servers: list[subprocess.Popen], stopping: threading.Event) -> None:
    """An API server that exits takes the others down with it (its clients would hang otherwise)."""
    while not stopping.wait(0.5):
        for server in servers:
            if server.poll() is not None:
                logger.error("an API server exited with %s: stopping", server.returncode)
                stopping.set()
                return


def run_api_server(spec: dict) -> None:
    """One API server: the app of a single-process server, over the engine process's loop."""
    import uvicorn

    from fastpage.entrypoints.openai.api_server import build_app_for
    from fastpage.llm_engine import LLMEngine
    from fastpage.parent_watch import exit_when_orphaned
    from fastpage.server.remote_loop import RemoteLoop
    from fastpage.structured_output import StructuredOutputsConfig
    from fastpage.tokenizer import load_tokenizer

    exit_when_orphaned(spec["parent_pid"])  # the engine process is gone: nothing left to serve
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s")
    args = argparse.Namespace(**spec["args"])
    args.disable_log_stats = args.disable_log_stats or spec["server_index"] > 0  # one stats line, not N
    loop = RemoteLoop(spec["server_index"], spec["command_address"], spec["output_address"], spec["max_model_len"],
                      spec["async_scheduling"])
    tokenizer = load_tokenizer(spec["tokenizer_source"], spec["eos_token_ids"], spec["chat_template"])
    llm = LLMEngine(loop, tokenizer, types.SimpleNamespace(vocab_size=spec["vocab_size"]), spec["max_model_len"],
                    model_name=spec["model_name"], max_logprobs=spec["max_logprobs"],
                    max_num_seqs=spec["max_num_seqs"], generation_defaults=spec["generation_defaults"],
                    tokenizer_source=spec["tokenizer_source"],
                    structured_outputs_config=StructuredOutputsConfig.from_json(args.structured_outputs_config))
    app = build_app_for(args, llm)
    config = uvicorn.Config(app, log_level=args.uvicorn_log_level, timeout_keep_alive=5, loop="uvloop",
                            http="httptools")
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=spec["listen_fd"])])


if __name__ == "__main__":
    run_api_server(json.loads(sys.argv[1]))
