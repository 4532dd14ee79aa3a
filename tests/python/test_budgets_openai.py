"""Budgets as a user of the official `openai` package sees them (docs/budgets.md): a refusal is
a `RateLimitError` with code `budget_exceeded`, and the SDK, which retries 429s by default,
does not retry it because the ingress says `x-should-retry: false`.

Runs the real binaries like test_openai_client.py, with config/ingress.toml plus a tiny daily
budget on team-b's demo key.
"""

import json
import os
import tempfile
import urllib.request
import uuid

import openai
import pytest

from test_openai_client import (BIN, CLICKHOUSE, KAFKA, MODEL, REPO, free_port, processes,
                                running, wait_http, write_worker_config)

TEAM_B_KEY = "sk-sluice-team-b"  # config/ingress.toml: key id key_team_b, team team-b
TINY_BUDGET = """
[[budgets]]
scope = "key"
subject = "key_team_b"
period = "day"
limit_usd = 0.00005
"""


@pytest.fixture(scope="module")
def budget_stack():
    for name in ("mock-provider", "sluice-ingress", "sluice-worker"):
        assert os.path.exists(os.path.join(BIN, name)), f"build first: cargo build --bins ({name})"
    prefix = "pyb" + uuid.uuid4().hex[:10]
    mock_port, ingress_port = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="sluice-py-budget-")
    worker_config = write_worker_config(tmp, mock_port)
    with open(os.path.join(REPO, "config", "ingress.toml")) as f:
        ingress_toml = f.read() + TINY_BUDGET
    ingress_config = os.path.join(tmp, "ingress.toml")
    with open(ingress_config, "w") as f:
        f.write(ingress_toml)
    env = dict(
        os.environ,
        RUST_LOG="warn",
        SLUICE_KAFKA_BOOTSTRAP=KAFKA,
        SLUICE_KAFKA_TOPIC_PREFIX=prefix,
        SLUICE_CLICKHOUSE_URL=CLICKHOUSE,
        SLUICE_CLICKHOUSE_DATABASE=f"sluice_{prefix}",
        SLUICE_SERVER_LISTEN=f"127.0.0.1:{ingress_port}",
        # config/ingress.toml's console port may be taken (a running scripts/run.sh).
        SLUICE_CONSOLE_LISTEN=f"127.0.0.1:{free_port()}",
    )
    with processes(tmp, env) as start:
        mock = start("mock-provider", "--listen", f"127.0.0.1:{mock_port}", "--completion-tokens", "24")
        wait_http(f"http://127.0.0.1:{mock_port}/v1/models", mock, "mock provider")
        ingress = start("sluice-ingress", "--config", ingress_config, "--demo")
        wait_http(f"http://127.0.0.1:{ingress_port}/healthz", ingress, "ingress")
        worker = start("sluice-worker", "--config", worker_config,
                       SLUICE_KAFKA_GROUP_ID=f"{prefix}-workers", SLUICE_WORKER_ID=f"{prefix}-w1")
        running(worker, "worker", os.path.join(tmp, "sluice-worker.log"))
        yield {"base_url": f"http://127.0.0.1:{ingress_port}/v1"}


def test_a_budget_refusal_is_a_rate_limit_error_the_sdk_does_not_retry(budget_stack):
    attempts = []
    http = openai.DefaultHttpxClient(
        event_hooks={"request": [lambda request: attempts.append(request.url.path)]})
    # The SDK's default: 2 retries of a 429, unless the server says not to.
    sdk = openai.OpenAI(base_url=budget_stack["base_url"], api_key=TEAM_B_KEY, max_retries=2,
                        timeout=60, http_client=http)
    admitted, refusal = 0, None
    for i in range(20):
        before = len(attempts)
        try:
            sdk.chat.completions.create(model=MODEL, max_tokens=24,
                                        messages=[{"role": "user", "content": f"question {i}"}])
            admitted += 1
        except openai.RateLimitError as e:
            refusal = e
            assert len(attempts) - before == 1, "the SDK did not retry the refusal"
            break
    assert refusal is not None, "the budget never refused"
    # ~16,000 nano-USD per request against 50,000.
    assert 1 <= admitted <= 3
    assert refusal.status_code == 429
    assert refusal.code == "budget_exceeded"
    assert refusal.type == "insufficient_quota"
    assert "key `key_team_b` daily budget" in refusal.message
    assert refusal.response.headers["x-should-retry"] == "false"

    # The budget is visible to its key.
    get = urllib.request.Request(budget_stack["base_url"] + "/budgets",
                                 headers={"Authorization": f"Bearer {TEAM_B_KEY}"})
    with urllib.request.urlopen(get) as r:
        budgets = json.load(r)
    (budget,) = budgets["data"]
    assert (budget["scope"], budget["subject"], budget["period"]) == ("key", "key_team_b", "day")
    assert budget["limit_nanos"] == 50_000
    assert budget["spent_nanos"] + budget["reserved_nanos"] > 0
