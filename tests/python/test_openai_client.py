"""Sluice as a user sees it: the official `openai` Python package pointed at the ingress.

Starts the real binaries (target/debug, built by scripts/test.sh) on the real Kafka and
ClickHouse from scripts/services.sh, under a topic prefix, consumer groups and database of
their own: mock provider, ingress, one worker and the analytics sink.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid

import openai
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, "target", "debug")
KAFKA = os.environ.get("SLUICE_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
CLICKHOUSE = os.environ.get("SLUICE_CLICKHOUSE_URL", "http://127.0.0.1:18123")
DEMO_KEY = "sk-sluice-demo"  # config/ingress.toml, team "demo"
MODEL = "gpt-4o-mini"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, proc, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer at {url}")


def clickhouse(sql):
    # As the tests' DDL-capable user (scripts/services.sh env), when there is one.
    headers = {}
    if os.environ.get("SLUICE_CLICKHOUSE_USER"):
        headers = {"X-ClickHouse-User": os.environ["SLUICE_CLICKHOUSE_USER"],
                   "X-ClickHouse-Key": os.environ.get("SLUICE_CLICKHOUSE_PASSWORD", "")}
    req = urllib.request.Request(CLICKHOUSE, data=sql.encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def write_worker_config(tmp, mock_port):
    """config/worker.toml pointed at the mock on `mock_port`, written into `tmp` with the price
    file it names (`[pricing] file` is relative to the config file). Returns its path."""
    with open(os.path.join(REPO, "config", "worker.toml")) as f:
        text = f.read().replace("127.0.0.1:9100", f"127.0.0.1:{mock_port}")
    path = os.path.join(tmp, "worker.toml")
    with open(path, "w") as f:
        f.write(text)
    shutil.copy(os.path.join(REPO, "config", "prices.toml"), os.path.join(tmp, "prices.toml"))
    return path


def running(proc, what, log, settle=1.0):
    """Fails at once, with the process's log, if `proc` exits within `settle` seconds of its
    start (a worker with a bad config exits; its callers would only see timeouts)."""
    try:
        code = proc.wait(timeout=settle)
    except subprocess.TimeoutExpired:
        return proc
    with open(log) as f:
        raise RuntimeError(f"{what} exited with {code}:\n{f.read()[-4000:]}")


@contextlib.contextmanager
def processes(tmp, env):
    """Starts binaries of target/debug with `env` (logs in `tmp`); stops them all on exit."""
    procs, logs = [], []

    def start(name, *args, **extra):
        log = open(os.path.join(tmp, f"{name}.log"), "w")
        logs.append(log)
        proc = subprocess.Popen([os.path.join(BIN, name), *args], env=dict(env, **extra),
                                stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def stack():
    for name in ("mock-provider", "sluice-ingress", "sluice-worker", "sluice-analytics"):
        assert os.path.exists(os.path.join(BIN, name)), f"build first: cargo build --bins ({name})"
    prefix = "py" + uuid.uuid4().hex[:10]
    database = f"sluice_{prefix}"
    mock_port, ingress_port = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="sluice-py-")
    worker_config = write_worker_config(tmp, mock_port)
    env = dict(
        os.environ,
        RUST_LOG="warn",
        SLUICE_KAFKA_BOOTSTRAP=KAFKA,
        SLUICE_KAFKA_TOPIC_PREFIX=prefix,
        SLUICE_CLICKHOUSE_URL=CLICKHOUSE,
        SLUICE_CLICKHOUSE_DATABASE=database,
        SLUICE_SERVER_LISTEN=f"127.0.0.1:{ingress_port}",
        SLUICE_SINK_FLUSH_INTERVAL_MS="200",
        SLUICE_IDEMPOTENCY_REDIS_URL=os.environ.get("SLUICE_REDIS_URL", "redis://127.0.0.1:16379"),
    )
    try:
        with processes(tmp, env) as start:
            mock = start("mock-provider", "--listen", f"127.0.0.1:{mock_port}", "--completion-tokens", "24")
            wait_http(f"http://127.0.0.1:{mock_port}/v1/models", mock, "mock provider")
            # The console port of config/ingress.toml may be taken (a running scripts/run.sh);
            # the demo team's retention policy keeps conversations (stored responses). The
            # ingress's own: the sink's [retention] knows no conversation_teams.
            ingress = start("sluice-ingress", "--config", os.path.join(REPO, "config", "ingress.toml"), "--demo",
                            SLUICE_CONSOLE_LISTEN=f"127.0.0.1:{free_port()}",
                            SLUICE_RETENTION_CONVERSATION_TEAMS='["demo"]')
            wait_http(f"http://127.0.0.1:{ingress_port}/healthz", ingress, "ingress")
            start("sluice-analytics", "--config", os.path.join(REPO, "config", "analytics.toml"),
                  SLUICE_KAFKA_GROUP_ID=f"{prefix}-analytics")
            worker = start("sluice-worker", "--config", worker_config,
                           SLUICE_KAFKA_GROUP_ID=f"{prefix}-workers", SLUICE_WORKER_ID=f"{prefix}-w1")
            running(worker, "worker", os.path.join(tmp, "sluice-worker.log"))
            yield {
                "base_url": f"http://127.0.0.1:{ingress_port}/v1",
                "mock_url": f"http://127.0.0.1:{mock_port}/v1",
                "database": database,
                "logs": tmp,
            }
    finally:
        try:
            clickhouse(f"DROP DATABASE IF EXISTS {database}")
            clickhouse(f"DROP DATABASE IF EXISTS {database}_private")
        except Exception:
            pass


def client(stack, key=DEMO_KEY):
    return openai.OpenAI(base_url=stack["base_url"], api_key=key, max_retries=0, timeout=60)


def direct(stack):
    """The mock provider called directly: what Sluice must reproduce."""
    return openai.OpenAI(base_url=stack["mock_url"], api_key="unused", max_retries=0)


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three rivers of Europe"},
]


def test_models_are_listed(stack):
    models = {m.id: m.to_dict() for m in client(stack).models.list()}
    assert MODEL in models
    # Sluice's additions ride in their own field: the price of config/prices.toml.
    assert models[MODEL]["sluice"]["price"] == {
        "input_per_million": 0.15, "output_per_million": 0.6, "cached_input_per_million": 0.075}


def test_a_completion_equals_what_the_provider_produced(stack):
    through = client(stack).chat.completions.create(model=MODEL, messages=MESSAGES)
    expected = direct(stack).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert through.choices[0].message.content == expected.choices[0].message.content
    assert through.choices[0].finish_reason == "stop"
    assert through.usage.prompt_tokens == expected.usage.prompt_tokens
    assert through.usage.completion_tokens == expected.usage.completion_tokens


def test_a_stream_equals_what_the_provider_produced_and_is_billed(stack):
    stream = client(stack).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    deltas, usage, finish, request_id = [], None, None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            deltas.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    request_id = stream.response.headers["x-sluice-request-id"]
    expected = direct(stack).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert "".join(deltas) == expected.choices[0].message.content
    assert finish == "stop"
    assert usage.completion_tokens == expected.usage.completion_tokens

    row = ""
    deadline = time.time() + 60
    while time.time() < deadline and not row.strip():
        row = clickhouse(
            f"SELECT prompt_tokens, completion_tokens, estimated FROM {stack['database']}.usage "
            f"FINAL WHERE request_id = '{request_id}'")
        time.sleep(0.2)
    assert row.split() == [str(usage.prompt_tokens), str(usage.completion_tokens), "0"]


def test_async_submit_then_poll(stack):
    body = {"model": MODEL, "messages": MESSAGES}
    req = urllib.request.Request(
        stack["base_url"] + "/requests", data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {DEMO_KEY}", "Content-Type": "application/json",
                 "x-sluice-priority": "batch"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 202
        accepted = json.load(r)
    deadline = time.time() + 60
    status = {}
    while time.time() < deadline:
        poll = urllib.request.Request(stack["base_url"] + f"/requests/{accepted['id']}",
                                      headers={"Authorization": f"Bearer {DEMO_KEY}"})
        with urllib.request.urlopen(poll) as r:
            status = json.load(r)
        if status["status"] == "completed":
            break
        time.sleep(0.2)
    assert status["status"] == "completed"
    expected = direct(stack).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert status["response"]["choices"][0]["message"]["content"] == expected.choices[0].message.content


def test_errors_are_the_sdk_exceptions_a_user_expects(stack):
    with pytest.raises(openai.AuthenticationError):
        client(stack, key="sk-wrong").chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.NotFoundError) as e:
        client(stack).chat.completions.create(model="gpt-nope", messages=MESSAGES)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client(stack).chat.completions.create(model=MODEL, messages=[])


def test_a_retry_with_the_same_idempotency_key_is_answered_once(stack):
    key = {"Idempotency-Key": "py-" + uuid.uuid4().hex}
    create = client(stack).chat.completions.with_raw_response.create
    first = create(model=MODEL, messages=MESSAGES, extra_headers=key)
    retry = create(model=MODEL, messages=MESSAGES, extra_headers=key)
    assert "x-sluice-idempotent-replayed" not in first.headers
    assert retry.headers["x-sluice-idempotent-replayed"] == "true"
    request_id = first.headers["x-sluice-request-id"]
    assert retry.headers["x-sluice-request-id"] == request_id
    assert retry.parse().choices[0].message.content == first.parse().choices[0].message.content
    # Another request under the same key: the SDK's 422, which it does not retry.
    with pytest.raises(openai.UnprocessableEntityError) as e:
        create(model=MODEL, messages=MESSAGES[1:], extra_headers=key)
    assert e.value.code == "idempotency_key_reused"
    # Billed once: one usage row for the request (a second would arrive with the first).
    count, deadline = "0", time.time() + 60
    while time.time() < deadline and count == "0":
        count = clickhouse(f"SELECT count() FROM {stack['database']}.usage FINAL "
                           f"WHERE request_id = '{request_id}'").strip()
        time.sleep(0.2)
    time.sleep(1)
    assert count == "1"
    assert clickhouse(f"SELECT count() FROM {stack['database']}.usage FINAL "
                      f"WHERE request_id = '{request_id}'").strip() == "1"


def test_a_repeated_request_is_answered_from_the_cache(stack):
    # config/ingress.toml caches the demo team's requests at temperature 0.
    sdk = client(stack)
    ask = dict(model=MODEL, temperature=0,
               messages=[{"role": "user", "content": "Cache me " + uuid.uuid4().hex}])
    first = sdk.chat.completions.with_raw_response.create(**ask)
    assert first.headers["x-sluice-cache"] == "miss"
    answer = first.parse().choices[0].message.content
    hit = sdk.chat.completions.with_raw_response.create(**ask)
    assert hit.headers["x-sluice-cache"] == "hit"
    assert hit.parse().choices[0].message.content == answer
    stream = sdk.chat.completions.create(stream=True, **ask)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert stream.response.headers["x-sluice-cache"] == "hit"
    assert text == answer
    # The hit is billed 0 and saved what the first call cost.
    hit_id = hit.headers["x-sluice-request-id"]
    first_id = first.headers["x-sluice-request-id"]
    rows, deadline = [], time.time() + 60
    while time.time() < deadline and len(rows) < 2:
        rows = clickhouse(
            f"SELECT request_id, cost_nanos, cache_hit, saved_nanos FROM {stack['database']}.usage "
            f"FINAL WHERE request_id IN ('{first_id}', '{hit_id}') ORDER BY cache_hit").split("\n")
        rows = [r.split("\t") for r in rows if r.strip()]
        time.sleep(0.2)
    (paid_id, cost, paid_hit, _), (got_id, hit_cost, cache_hit, saved) = rows
    assert (paid_id, paid_hit, got_id, hit_cost, cache_hit) == (first_id, "0", hit_id, "0", "1")
    assert int(cost) > 0 and saved == cost


EMBED = "text-embedding-3-small"  # config/worker.toml: OpenAI's deployment, Gemini's fallback


def test_embeddings_equal_what_the_provider_produced(stack):
    texts = ["the quick brown fox", "jumps"]
    # The SDK asks for base64 by default and decodes it; Sluice passes it through.
    through = client(stack).embeddings.create(model=EMBED, input=texts)
    expected = direct(stack).embeddings.create(model=EMBED, input=texts, encoding_format="float")
    assert [d.index for d in through.data] == [0, 1]
    assert [d.embedding for d in through.data] == [d.embedding for d in expected.data]
    assert len(through.data[0].embedding) == 16
    assert through.usage.prompt_tokens == expected.usage.prompt_tokens == 5

    floats = client(stack).embeddings.create(
        model=EMBED, input="jumps", encoding_format="float", dimensions=4)
    again = direct(stack).embeddings.create(
        model=EMBED, input="jumps", encoding_format="float", dimensions=4)
    assert floats.data[0].embedding == again.data[0].embedding

    with pytest.raises(openai.BadRequestError) as e:
        client(stack).embeddings.create(model=EMBED, input=[])
    assert e.value.param == "input"


def test_responses_sync_and_streaming(stack):
    expected = direct(stack).chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "You are terse."},
                               {"role": "user", "content": "Name three rivers of Europe"}])
    r = client(stack).responses.create(
        model=MODEL, instructions="You are terse.", input="Name three rivers of Europe",
        store=False, metadata={"job": "sdk"})
    assert r.object == "response" and r.status == "completed"
    assert r.output_text == expected.choices[0].message.content
    assert r.usage.input_tokens == expected.usage.prompt_tokens
    assert r.usage.output_tokens == expected.usage.completion_tokens

    types, text, final = [], "", None
    with client(stack).responses.stream(
            model=MODEL, instructions="You are terse.",
            input=[{"role": "user", "content": "Name three rivers of Europe"}]) as stream:
        for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert text == expected.choices[0].message.content
    assert final.output_text == text
    assert final.usage.output_tokens == expected.usage.completion_tokens

    # No such stored response (nor another team's): 404.
    with pytest.raises(openai.NotFoundError):
        client(stack).responses.create(model=MODEL, input="x", previous_response_id="resp_1")


def test_a_stored_response_is_continued_with_previous_response_id(stack):
    first = client(stack).responses.create(model=MODEL, input="My name is Ada.", store=True)
    assert first.status == "completed" and first.store is True
    second = client(stack).responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    # The provider was sent the whole conversation: the same answer as asking it directly.
    expected = direct(stack).chat.completions.create(model=MODEL, messages=[
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"}])
    assert second.output_text == expected.choices[0].message.content


WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


def test_responses_with_a_tool_call_sync_and_streaming(stack):
    chat_tool = {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
    expected = direct(stack).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris"}],
        tools=[chat_tool], tool_choice="required").choices[0].message.tool_calls[0]

    r = client(stack).responses.create(
        model=MODEL, input="Weather in Paris", tools=[WEATHER], tool_choice="required")
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.arguments == expected.function.arguments
    assert json.loads(call.arguments) == {"city": "Weather in Paris"}

    with client(stack).responses.stream(
            model=MODEL, input="Weather in Paris", tools=[WEATHER],
            tool_choice="required") as stream:
        arguments = "".join(e.delta for e in stream
                            if e.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    assert arguments == expected.function.arguments
    assert final.output[0].type == "function_call"

    # The tool's output sent back continues the turn in text.
    follow = client(stack).responses.create(
        model=MODEL, tools=[WEATHER], input=[
            {"role": "user", "content": "Weather in Paris"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert follow.status == "completed" and follow.output_text


NATIVE = "gpt-5-mini"  # config/worker.toml: an OpenAI deployment called at /v1/responses
NATIVE_PRICE = (0.25, 2.0)  # schemas/data/price_catalogue.toml, USD per million in / out


def usage_row(stack, request_id):
    """`prompt_tokens completion_tokens cost_nanos` billed for `request_id`, once written."""
    deadline = time.time() + 60
    while time.time() < deadline:
        row = clickhouse(
            f"SELECT prompt_tokens, completion_tokens, cost_nanos FROM {stack['database']}.usage "
            f"FINAL WHERE request_id = '{request_id}'").split()
        if row:
            return [int(v) for v in row]
        time.sleep(0.2)
    raise AssertionError(f"no usage row for {request_id}")


def test_a_native_responses_deployment_answers_as_openai_would(stack):
    raw = client(stack).responses.with_raw_response.create(
        model=NATIVE, instructions="You are terse.", input="Name three rivers of Europe",
        max_output_tokens=64)
    through = raw.parse()
    # The same request straight to the provider's Responses API, with its own model name.
    expected = direct(stack).responses.create(
        model=NATIVE, instructions="You are terse.", input="Name three rivers of Europe",
        max_output_tokens=64, store=False)
    assert through.status == "completed"
    assert through.output_text == expected.output_text != ""
    assert through.usage.input_tokens == expected.usage.input_tokens
    assert through.usage.output_tokens == expected.usage.output_tokens
    prompt, completion = expected.usage.input_tokens, expected.usage.output_tokens
    cost = round(prompt * NATIVE_PRICE[0] * 1000 + completion * NATIVE_PRICE[1] * 1000)
    assert usage_row(stack, raw.headers["x-sluice-request-id"]) == [prompt, completion, cost]

    with client(stack).responses.stream(
            model=NATIVE, instructions="You are terse.",
            input="Name three rivers of Europe") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == expected.output_text == final.output_text

    # A chat caller of the same deployment: the provider's answer as a chat completion.
    chat = client(stack).chat.completions.create(model=NATIVE, messages=MESSAGES)
    assert chat.choices[0].message.content == expected.output_text
    assert chat.usage.completion_tokens == expected.usage.output_tokens
    # A chat field the Responses API has no form for: refused, naming it.
    with pytest.raises(openai.BadRequestError) as e:
        client(stack).chat.completions.create(model=NATIVE, messages=MESSAGES, stop=["."])
    assert "`stop`" in e.value.message


def test_a_background_response_is_retrieved_when_done(stack):
    queued = client(stack).responses.create(model=MODEL, input="Name a river", background=True)
    assert queued.status == "queued"
    deadline = time.time() + 60
    r = queued
    while time.time() < deadline and r.status not in ("completed", "failed", "incomplete"):
        time.sleep(0.2)
        r = client(stack).responses.retrieve(queued.id)
    assert r.status == "completed" and r.id == queued.id
    expected = direct(stack).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a river"}])
    assert r.output_text == expected.choices[0].message.content
    # Cancelling a response that ended answers it as it is.
    after = client(stack).responses.cancel(queued.id)
    assert after.status == "completed" and after.output_text == r.output_text
