"""The engine loop of another process, for an API server of `fastpage serve --api-server-count N`.

RemoteLoop stands where an LLMEngine holds its C++ EngineLoop: add, abort and finish become msgpack
commands on a ZeroMQ socket to the engine process; take() returns the rows of each step that belong to
this server's requests, in the StepBatch's own field names, so the output processor (detokenization,
stop strings, DELTAs) runs here, in the API server, as it does in one process. No pickle: every
message is msgpack of plain lists and numbers.

Wire format (both directions, msgpack):
- to the engine: ["hello", server] | ["add", server, handle, request_id, prompt_token_ids, params (a
  dict of the C++ SamplingParams fields), eos_token_ids, priority] | ["abort", request_id] |
  ["finish", request_id, seq_index]
- to a server: a dict of StepBatch fields (BATCH_FIELDS), handles numbered by that server; logprob
  entries as [token, logprob, rank, top_ids, top_logprobs]; stats as a dict.
"""

from __future__ import annotations

import threading
import time
import types
from typing import NamedTuple

import msgpack
import zmq

from fastpage.llm_engine import ENGINE_STATS_FIELDS

# The StepBatch fields that travel, as they are named on the C++ StepBatch.
BATCH_FIELDS = ("handles", "seq_indices", "token_offsets", "token_ids", "finish_reasons", "stop_tokens",
                "cumulative_logprobs", "num_cached_tokens", "logprob_rows", "logprobs", "prompt_logprob_rows",
                "prompt_logprobs", "rejected_handles", "rejected_reasons", "timestamp", "num_steps", "stats",
                "failure")
# The engine's output thread sends at least this often (an empty batch with the stats when idle);
# nothing for ENGINE_SILENT_S means the engine process is gone.
ENGINE_SILENT_S = 10.0


class TokenLogprobs(NamedTuple):
    """A logprob entry as the C++ TokenLogprobs names its fields."""
    token: int
    logprob: float
    rank: int
    top_ids: list[int]
    top_logprobs: list[float]


def c_params_fields(params) -> dict:
    """The C++ SamplingParams' fields, read from the bound type (no second list of them); the nested
    StructuredOutput as a dict of its own fields, its kind by name."""
    fields = _bound_fields(params)
    structured = fields.pop("structured_output")
    fields["structured_output"] = {**_bound_fields(structured), "kind": structured.kind.name}
    return fields


def c_params_from_fields(fields: dict):
    """c_params_fields' inverse."""
    from fastpage import _C

    params = _C.CSamplingParams()
    structured = _C.StructuredOutput()
    for name, value in fields.pop("structured_output").items():
        setattr(structured, name, getattr(_C.GrammarKind, value) if name == "kind" else value)
    for name, value in fields.items():
        setattr(params, name, value)
    params.structured_output = structured
    return params


def _bound_fields(obj) -> dict:
    return {name: getattr(obj, name) for name, attr in vars(type(obj)).items() if isinstance(attr, property)}


def pack(message) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class RemoteLoop:
    def __init__(self, server_index: int, command_address: str, output_address: str,
                 max_model_len: int, async_scheduling: bool):
        self.server_index = server_index
        self.max_model_len = max_model_len
        self.async_scheduling = async_scheduling
        self._context = zmq.Context()
        self._commands = self._context.socket(zmq.PUSH)
        self._commands.connect(command_address)
        self._outputs = self._context.socket(zmq.PULL)
        self._outputs.connect(output_address)
        self._send_lock = threading.Lock()  # handlers add/abort on the event loop; finish comes from the outputs thread
        self._last_heard = time.monotonic()
        self._stats = types.SimpleNamespace(**dict.fromkeys(ENGINE_STATS_FIELDS, 0))
        self._send(["hello", server_index])

    def _send(self, message) -> None:
        with self._send_lock:
            self._commands.send(pack(message))

    # The EngineLoop interface LLMEngine and the server use.
    def add_request(self, handle: int, request_id: str, prompt_token_ids: list[int], params,
                    eos_token_ids: list[int], priority: int = 0) -> None:
        self._send(["add", self.server_index, handle, request_id, prompt_token_ids, c_params_fields(params),
                    eos_token_ids, priority])

    def abort_request(self, request_id: str) -> None:
        self._send(["abort", request_id])

    def finish_sequence(self, request_id: str, seq_index: int) -> None:
        self._send(["finish", request_id, seq_index])

    @property
    def running(self) -> bool:
        return True  # the engine process's loop thread steps

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self._commands.close(linger=0)
        self._outputs.close(linger=0)
        self._context.term()

    def step(self) -> None:
        raise RuntimeError("the engine runs in another process (--api-server-count): it steps on its own")

    def check_invariants(self) -> None:
        raise RuntimeError("the engine runs in another process (--api-server-count)")

    def stats(self):
        return self._stats

    def take(self, timeout_s: float):
        """This server's rows of the steps since the last call (waits up to timeout_s for them)."""
        if self._outputs.poll(int(timeout_s * 1000)):
            fields = unpack(self._outputs.recv())
            self._last_heard = time.monotonic()
        else:
            fields = {name: [] for name in BATCH_FIELDS}
            fields.update(timestamp=time.monotonic(), num_steps=0, stats=vars(self._stats), failure="")
            silent = time.monotonic() - self._last_heard
            if silent > ENGINE_SILENT_S:
                fields["failure"] = f"the engine process has not answered for {silent:.0f} s"
        for name in ("logprobs", "prompt_logprobs"):
            fields[name] = [[TokenLogprobs(*entry) for entry in row] for row in fields[name]]
        fields["stats"] = self._stats = types.SimpleNamespace(**fields["stats"])
        batch = types.SimpleNamespace(**fields)
        batch.num_rows = len(batch.handles)
        return batch
