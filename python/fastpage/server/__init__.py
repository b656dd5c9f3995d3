"""The OpenAI-compatible HTTP server (`fastpage serve`).

Module map: protocol (request/response models and their bounds), errors (OpenAI-shaped errors),
async_engine (the engine thread and per-request queues), serving_completions / serving_chat /
serving_tokenize (endpoint logic), tool_parsers (model text -> tool calls), metrics (Prometheus),
stats_logger (the periodic log line), app (FastAPI wiring, auth, body-size limit).
"""
