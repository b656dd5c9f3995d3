"""The OpenAI-compatible HTTP server (`fastpage serve`).

Module map: protocol (request/response models and their bounds), errors (OpenAI-shaped errors),
async_engine (the output thread, per-request collectors, request streams), serving_base (what the
endpoints share: sampling params, SSE chunk encoding), serving_completions / serving_chat (endpoint
logic), tool_parsers (model text -> tool calls, incrementally while streaming), metrics (Prometheus),
stats_logger (the periodic log line), app (FastAPI wiring, auth, body-size limit, tokenize routes).
"""
