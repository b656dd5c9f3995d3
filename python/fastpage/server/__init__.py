"""The OpenAI-compatible HTTP server (`fastpage serve`).

Module map: protocol (request models and their bounds), errors (OpenAI-shaped errors), async_engine
(the output thread, per-request collectors, request streams), serving_base (what the endpoints share:
sampling params, SSE chunk encoding), serving_completions / serving_chat (endpoint logic),
structured_fields (response_format / structured_outputs / guided_* -> StructuredOutputsParams),
tool_parsers (model text -> tool calls, incrementally while streaming; `required` for an enforced
tool choice), reasoning_parsers (thinking -> reasoning_content), metrics (Prometheus), stats_logger
(the periodic log line), app (FastAPI wiring, auth, body-size limit, tokenize routes); with
--api-server-count N: api_servers (the processes), engine_core (the engine process's routing),
remote_loop (the engine loop seen from an API server).
"""
