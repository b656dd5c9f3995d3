"""The soak test of the served path, CI-sized: 64 streaming clients for about a minute against a
real server on the tiny random Llama (CPU, async scheduling on, as on one GPU), with n > 1 streams,
chat streams with tools, non-streamed requests and random hang-ups, and a KV budget small enough to
force preemption. Every request must end completed or aborted (none failed), every KV block must be
back once the server is idle, and its RSS must stay flat. bench/soak.py is the driver; its long form
(256 clients, 10 minutes) runs from the command line."""

import importlib.util
import json
import os

import pytest

from server_process import running_server
from test_server_e2e import API_KEY, CHATML_WITH_TOOLS, MAX_MODEL_LEN
from tiny_models import tiny_models  # noqa: F401  (session fixture)
from tiny_tokenizer import byte_level_bpe

SOAK_CLIENTS = 64
SOAK_DURATION_S = 60.0  # of load; in-flight requests then finish and the server goes idle
SOAK_WARMUP_S = 15.0  # RSS baseline taken here, under load
SOAK_REQUEST_TIMEOUT_S = 60.0  # a request still unanswered then is a hang (they take seconds)
MIN_COMPLETED = 200  # a floor far below what a loaded 2-core box completes in a minute

_SOAK_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "soak.py")
_spec = importlib.util.spec_from_file_location("soak", _SOAK_PATH)
soak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak)


def server_log_problems(log_path, limit: int = 40) -> str:
    with open(log_path) as f:
        lines = f.readlines()
    marked = [i for i, line in enumerate(lines) if "Traceback" in line or "ERROR" in line]
    return "".join(lines[i] for i in marked[:limit]) if marked else "(no ERROR or Traceback in the server log)"


@pytest.mark.slow
def test_soak(tiny_models, tmp_path):  # noqa: F811
    path = tiny_models["llama"]
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        byte_level_bpe(256, all_bytes=False).save_pretrained(path)
    template = tmp_path / "chatml_tools.jinja"
    template.write_text(CHATML_WITH_TOOLS)
    log_path = tmp_path / "server.log"
    args = soak.server_args(path, str(template), max_model_len=MAX_MODEL_LEN, async_scheduling=True)
    with running_server(args, log_path, env={"FASTPAGE_API_KEY": API_KEY}) as base:
        summary = soak.run_soak(base, clients=SOAK_CLIENTS, duration_s=SOAK_DURATION_S, warmup_s=SOAK_WARMUP_S,
                                api_key=API_KEY, server_pid=soak.find_server_pid(base),
                                request_timeout_s=SOAK_REQUEST_TIMEOUT_S)
    (tmp_path / "soak_summary.json").write_text(json.dumps(summary, indent=1))
    report = json.dumps({k: v for k, v in summary.items() if k not in ("failures", "rss_samples")})
    print(report)

    assert summary["sent"] == summary["completed"] + summary["aborted"] + summary["failed"], report
    first_of_class = {f["class"]: f for f in reversed(summary["failures"])}
    assert summary["failed"] == 0, (
        f"{summary['failed']} failed requests by class: {summary['failure_classes']}; the first of each:\n"
        + "\n".join(json.dumps(f, ensure_ascii=False)[:4000] for f in first_of_class.values())
        + f"\nserver log:\n{server_log_problems(log_path)}\n{report}")
    assert summary["completed"] >= MIN_COMPLETED, report
    assert summary["aborted"] > 0, report  # hang-ups happened
    assert summary["idle"], f"blocks or requests still held when idle: {summary['idle_metrics']}"
    assert summary["idle_metrics"]["kv_cache_usage_perc"] == 0 and summary["idle_metrics"]["num_requests_running"] == 0
    assert summary["health_after"] == 200
    assert summary["preemptions"] > 0, report  # the small KV budget forced preemption
    assert summary["rss_start_mb"] is not None and summary["rss_end_mb"] is not None, report
    assert summary["rss_flat"], (f"server RSS grew from {summary['rss_start_mb']:.0f} MB after the warm-up to "
                                 f"{summary['rss_end_mb']:.0f} MB: {summary['rss_samples']}")
