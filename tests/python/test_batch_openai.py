"""The Files and Batch APIs as a user sees them: the official `openai` package's
`client.files` and `client.batches` calls, and the `anthropic` package's
`client.messages.batches`, against a live stack (the same stack as test_openai_client.py: real
binaries, Kafka and ClickHouse, the mock provider)."""

import json
import os
import tempfile
import time

import openai
import pytest

from test_openai_client import MODEL, client, clickhouse, stack  # noqa: F401  (fixture)


def wait_tables(stack):
    """The analytics sink applies the migrations when it starts, after the ingress."""
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if clickhouse(f"EXISTS TABLE {stack['database']}_private.batch_lines").strip() == "1":
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError("batch tables never appeared")


def request_line(custom_id, text):
    return json.dumps({
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": text}]},
    })


def upload(c, lines):
    path = os.path.join(tempfile.mkdtemp(prefix="sluice-batch-"), "input.jsonl")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(path, "rb") as f:
        return c.files.create(file=f, purpose="batch")


def wait_status(c, batch_id, statuses, timeout=120):
    deadline = time.time() + timeout
    batch = None
    while time.time() < deadline:
        batch = c.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.3)
    raise AssertionError(f"batch stayed {batch.status if batch else None}: {batch}")


def jsonl(c, file_id):
    return [json.loads(l) for l in c.files.content(file_id).text.splitlines() if l.strip()]


def test_a_batch_runs_through_the_sdk_and_bad_lines_land_in_the_error_file(stack):
    wait_tables(stack)
    c = client(stack)
    lines = [request_line(f"req-{i}", f"question {i}") for i in range(20)]
    lines.insert(7, "{this line is not json")
    uploaded = upload(c, lines)
    assert uploaded.purpose == "batch"
    assert uploaded.id.startswith("file-")
    assert c.files.retrieve(uploaded.id).bytes == uploaded.bytes

    batch = c.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                             completion_window="24h", metadata={"run": "python"})
    assert batch.status in ("validating", "in_progress")
    assert batch.metadata == {"run": "python"}
    done = wait_status(c, batch.id, {"completed", "failed", "expired", "cancelled"})
    assert done.status == "completed", done
    assert done.request_counts.total == 21
    assert done.request_counts.completed == 20
    assert done.request_counts.failed == 1

    output = jsonl(c, done.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(f"req-{i}" for i in range(20))
    for o in output:
        assert o["response"]["status_code"] == 200
        assert o["response"]["body"]["choices"][0]["message"]["content"]
    errors = jsonl(c, done.error_file_id)
    assert len(errors) == 1
    assert errors[0]["error"]["code"] == "invalid_json"
    assert errors[0]["error"]["line"] == 8

    listed = [b.id for b in c.batches.list(limit=10)]
    assert batch.id in listed


def test_cancel_in_the_middle_through_the_sdk(stack):
    wait_tables(stack)
    c = client(stack)
    uploaded = upload(c, [request_line(f"c-{i}", "hello") for i in range(3000)])
    batch = c.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                             completion_window="24h")
    # At once: the driver publishes 2,000-line blocks and checks for a cancel before each,
    # so the second block is never published (a fast mock could finish everything in the
    # time a sleep would give it).
    cancelled = c.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    done = wait_status(c, batch.id, {"cancelled"})
    counts = done.request_counts
    assert counts.total == 3000
    assert counts.completed + counts.failed == 3000
    assert counts.completed < 3000, "the cancel stopped lines before they ran"
    errors = jsonl(c, done.error_file_id)
    assert len(errors) == counts.failed
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}


def test_bad_requests_get_openai_errors(stack):
    wait_tables(stack)
    c = client(stack)
    with pytest.raises(openai.BadRequestError) as e:
        with open(__file__, "rb") as f:
            c.files.create(file=f, purpose="fine-tune")
    assert e.value.body["code"] == "invalid_value"
    with pytest.raises(openai.BadRequestError) as e:
        with open(__file__, "rb") as f:
            c.files.create(file=f, purpose="batch")
    assert e.value.body["code"] == "invalid_jsonl"
    with pytest.raises(openai.NotFoundError):
        c.batches.retrieve("batch_doesnotexist")
    with pytest.raises(openai.NotFoundError):
        c.batches.create(input_file_id="file-doesnotexist", endpoint="/v1/chat/completions",
                         completion_window="24h")


def test_anthropic_message_batches_through_the_anthropic_sdk(stack):
    import anthropic

    wait_tables(stack)
    c = anthropic.Anthropic(base_url=stack["base_url"].removesuffix("/v1"), api_key="sk-sluice-demo",
                            max_retries=0)
    requests = [
        {"custom_id": f"m-{i}", "params": {"model": MODEL, "max_tokens": 32,
                                           "messages": [{"role": "user", "content": f"hi {i}"}]}}
        for i in range(4)
    ]
    batch = c.messages.batches.create(requests=requests)
    assert batch.type == "message_batch"
    assert batch.processing_status == "in_progress"
    deadline = time.time() + 120
    while batch.processing_status != "ended" and time.time() < deadline:
        time.sleep(0.3)
        batch = c.messages.batches.retrieve(batch.id)
    assert batch.processing_status == "ended"
    assert batch.request_counts.succeeded == 4
    results = {r.custom_id: r for r in c.messages.batches.results(batch.id)}
    assert sorted(results) == [f"m-{i}" for i in range(4)]
    for r in results.values():
        assert r.result.type == "succeeded"
        assert r.result.message.content[0].text
    assert batch.id in [b.id for b in c.messages.batches.list(limit=5)]
    with pytest.raises(anthropic.NotFoundError):
        c.messages.batches.retrieve("msgbatch_doesnotexist")
