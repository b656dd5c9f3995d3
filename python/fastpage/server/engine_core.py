"""The engine process of `fastpage serve --api-server-count N`: the C++ engine loop steps on its own
thread; one thread applies the API servers' commands (remote_loop.py has the wire format) and the
main thread takes each step's batch and sends every API server the rows of its requests. A request's
handle here is its server's handle * N + the server's index, so the rows find their way back."""

from __future__ import annotations

import collections
import threading

import zmq

from fastpage.llm_engine import ENGINE_STATS_FIELDS
from fastpage.server.remote_loop import BATCH_FIELDS, c_params_from_fields, pack, unpack

TAKE_TIMEOUT_S = 0.25  # an idle engine still sends this often (the stats, and that it is alive)


def serve_engine_core(loop, num_servers: int, command_address: str, output_addresses: list[str],
                      stopping: threading.Event) -> None:
    """Runs until stopping is set; loop is the LLMEngine's _C.EngineLoop."""
    context = zmq.Context()
    outputs = []
    for address in output_addresses:
        socket = context.socket(zmq.PUSH)
        socket.bind(address)
        outputs.append(socket)
    connected = [False] * num_servers  # a server gets batches once it said hello
    rejected: collections.deque = collections.deque()  # (server, handle, why), from the command thread
    commands = threading.Thread(target=_apply_commands, name="fastpage-commands", daemon=True,
                                args=(loop, context, command_address, num_servers, connected, rejected, stopping))
    commands.start()
    loop.start()
    try:
        while not stopping.is_set():
            batch = loop.take(TAKE_TIMEOUT_S)
            for server, message in enumerate(split_batch(batch, num_servers, rejected)):
                if connected[server]:
                    outputs[server].send(pack(message))
            if batch.failure:
                break
    finally:
        loop.stop()
        stopping.set()
        commands.join(timeout=5)
        for socket in outputs:
            socket.close(linger=0)
        context.term()


def _apply_commands(loop, context, address: str, num_servers: int, connected: list[bool],
                    rejected: collections.deque, stopping: threading.Event) -> None:
    socket = context.socket(zmq.PULL)
    socket.bind(address)
    try:
        while not stopping.is_set():
            if not socket.poll(int(TAKE_TIMEOUT_S * 1000)):
                continue
            message = unpack(socket.recv())
            kind = message[0]
            if kind == "add":
                _, server, handle, request_id, prompt_token_ids, fields, eos_token_ids, priority = message
                params = c_params_from_fields(fields)
                try:
                    loop.add_request(handle * num_servers + server, request_id, prompt_token_ids, params,
                                     eos_token_ids, priority)
                except (ValueError, RuntimeError) as err:  # the server checked the request; say why anyway
                    rejected.append((server, handle, str(err)))
            elif kind == "abort":
                loop.abort_request(message[1])
            elif kind == "finish":
                loop.finish_sequence(message[1], message[2])
            elif kind == "hello":
                connected[message[1]] = True
    finally:
        socket.close(linger=0)


def split_batch(batch, num_servers: int, rejected: collections.deque) -> list[dict]:
    """One message per server: the batch's rows of its requests (its own handles), the stats, and
    the requests of it that the engine refused."""
    handles, seq_indices, offsets = batch.handles, batch.seq_indices, batch.token_offsets
    token_ids, finish_reasons, stop_tokens = batch.token_ids, batch.finish_reasons, batch.stop_tokens
    cumulative, cached = batch.cumulative_logprobs, batch.num_cached_tokens
    logprobs = dict(zip(batch.logprob_rows, batch.logprobs)) if batch.logprob_rows else {}
    prompt_logprobs = dict(zip(batch.prompt_logprob_rows, batch.prompt_logprobs)) if batch.prompt_logprob_rows else {}
    stats = {name: getattr(batch.stats, name) for name in ENGINE_STATS_FIELDS}
    messages = [{name: [] for name in BATCH_FIELDS} for _ in range(num_servers)]
    for message in messages:
        message.update(token_offsets=[0], timestamp=batch.timestamp, num_steps=batch.num_steps, stats=stats,
                       failure=batch.failure)
    for r, handle in enumerate(handles):
        message = messages[handle % num_servers]
        row = len(message["handles"])
        message["handles"].append(handle // num_servers)
        message["seq_indices"].append(seq_indices[r])
        message["token_ids"].extend(token_ids[offsets[r]:offsets[r + 1]])
        message["token_offsets"].append(len(message["token_ids"]))
        message["finish_reasons"].append(finish_reasons[r])
        message["stop_tokens"].append(stop_tokens[r])
        message["cumulative_logprobs"].append(cumulative[r])
        message["num_cached_tokens"].append(cached[r])
        for rows_field, entries_field, entries in (("logprob_rows", "logprobs", logprobs.get(r)),
                                                   ("prompt_logprob_rows", "prompt_logprobs", prompt_logprobs.get(r))):
            if entries is not None:
                message[rows_field].append(row)
                message[entries_field].append([[e.token, e.logprob, e.rank, list(e.top_ids), list(e.top_logprobs)]
                                               for e in entries])
    for handle, why in zip(batch.rejected_handles, batch.rejected_reasons):  # refused when the loop ran the add
        rejected.append((handle % num_servers, handle // num_servers, why))
    while rejected:
        server, handle, why = rejected.popleft()
        messages[server]["rejected_handles"].append(handle)
        messages[server]["rejected_reasons"].append(why)
    return messages
