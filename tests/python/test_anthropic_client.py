"""Sluice as an Anthropic SDK user sees it: the official `anthropic` Python package pointed at
the ingress's POST /v1/messages, in front of any model: one served in OpenAI's wire format
and one in Anthropic's (both by the mock provider, through Kafka and a worker).

The stack (mock provider, ingress, worker, analytics sink) is the one test_openai_client.py
starts, with its own topic prefix and database.
"""

import time

import anthropic
import openai
import pytest

from test_openai_client import DEMO_KEY, MODEL, clickhouse, stack  # noqa: F401 (fixture)

CLAUDE = "claude-sonnet"  # config/worker.toml: an Anthropic-format deployment on the mock
SYSTEM = "You are terse."
MESSAGES = [{"role": "user", "content": "Name three rivers of Europe"}]


def client(stack, key=DEMO_KEY):  # noqa: F811
    origin = stack["base_url"].removesuffix("/v1")
    return anthropic.Anthropic(base_url=origin, api_key=key, max_retries=0, timeout=60)


def expected(stack, model):  # noqa: F811
    """What the mock answers when called directly, in the format the deployment speaks."""
    if model == CLAUDE:
        mock = anthropic.Anthropic(base_url=stack["mock_url"].removesuffix("/v1"),
                                   api_key="unused", max_retries=0)
        direct = mock.messages.create(model="claude-sonnet-4-6", max_tokens=64, system=SYSTEM,
                                      messages=MESSAGES)
        return direct.content[0].text, direct.usage.input_tokens, direct.usage.output_tokens
    mock = openai.OpenAI(base_url=stack["mock_url"], api_key="unused", max_retries=0)
    direct = mock.chat.completions.create(
        model=model, max_tokens=64,
        messages=[{"role": "system", "content": SYSTEM}, *MESSAGES])
    return (direct.choices[0].message.content, direct.usage.prompt_tokens,
            direct.usage.completion_tokens)


@pytest.mark.parametrize("model", [MODEL, CLAUDE])
def test_a_message_equals_what_the_provider_produced(stack, model):  # noqa: F811
    message = client(stack).messages.create(model=model, max_tokens=64, system=SYSTEM,
                                            messages=MESSAGES)
    text, input_tokens, output_tokens = expected(stack, model)
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == input_tokens
    assert message.usage.output_tokens == output_tokens


@pytest.mark.parametrize("model", [MODEL, CLAUDE])
def test_a_stream_equals_what_the_provider_produced(stack, model):  # noqa: F811
    with client(stack).messages.stream(model=model, max_tokens=64, system=SYSTEM,
                                       messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    expected_text, input_tokens, output_tokens = expected(stack, model)
    assert text == expected_text
    assert final.content[0].text == expected_text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == output_tokens
    assert final.usage.input_tokens == input_tokens


def test_errors_are_the_sdk_exceptions_a_user_expects(stack):  # noqa: F811
    with pytest.raises(anthropic.AuthenticationError):
        client(stack, key="sk-wrong").messages.create(model=MODEL, max_tokens=8,
                                                      messages=MESSAGES)
    with pytest.raises(anthropic.NotFoundError) as err:
        client(stack).messages.create(model="claude-9", max_tokens=8, messages=MESSAGES)
    assert err.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client(stack).messages.create(model=MODEL, max_tokens=0, messages=MESSAGES)


@pytest.mark.parametrize("model", [MODEL, CLAUDE])
def test_count_tokens_is_the_count_a_call_is_admitted_with(stack, model):  # noqa: F811
    counted = client(stack).messages.count_tokens(model=model, system=SYSTEM, messages=MESSAGES)
    longer = client(stack).messages.count_tokens(
        model=model, system=SYSTEM,
        messages=[{"role": "user", "content": MESSAGES[0]["content"] + ", and their sources"}])
    assert 0 < counted.input_tokens < longer.input_tokens

    raw = client(stack).messages.with_raw_response.create(model=model, max_tokens=16,
                                                          system=SYSTEM, messages=MESSAGES)
    request_id = raw.headers["x-sluice-request-id"]
    row = ""
    deadline = time.time() + 60
    while time.time() < deadline and not row.strip():
        row = clickhouse(
            f"SELECT prompt_tokens FROM {stack['database']}.audit FINAL "
            f"WHERE request_id = '{request_id}' AND action = 'accepted'")
        time.sleep(0.2)
    assert row.split() == [str(counted.input_tokens)]

    with pytest.raises(anthropic.NotFoundError):
        client(stack).messages.count_tokens(model="claude-9", messages=MESSAGES)
    with pytest.raises(anthropic.AuthenticationError):
        client(stack, key="sk-wrong").messages.count_tokens(model=model, messages=MESSAGES)
