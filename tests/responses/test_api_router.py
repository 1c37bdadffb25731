"""/v1/responses with the official OpenAI SDK, unchanged, against a real server over a socket."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.responses import Response

from tests.conftest import ADMIN_KEY, USER_KEY, auth
from tests.documents.samples import sample
from tests.openai_api.conftest import sdk
from tests.responses.conftest import Prompts

GREEDY = {"model": "tiny", "temperature": 0, "max_output_tokens": 6}


def test_create_plain_is_a_turn_of_a_chat_session(server: str) -> None:
    client = sdk(server)
    response = client.responses.create(input="Say hello.", instructions="Be brief.", **GREEDY)  # type: ignore[arg-type]

    assert isinstance(response, Response)
    assert response.id.startswith("resp_") and response.object == "response" and response.model == "tiny"
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert (response.status == "incomplete") == (response.usage.output_tokens == 6)
    assert response.instructions == "Be brief." and response.temperature == 0

    session_id = response.model_dump()["session_id"]
    session = httpx.get(f"{server}/chat/{session_id}", headers=auth()).json()
    assert session["system_prompt"] == "Be brief."
    assert [(m["role"], m["content"]) for m in session["messages"]] == [
        ("user", "Say hello."),
        ("assistant", response.output_text),
    ]
    assert session["messages"][1]["response_id"] == response.id

    again = client.responses.retrieve(response.id)
    assert again.output_text == response.output_text and again.usage == response.usage
    assert again.id == response.id and again.status == response.status


def test_streamed_events_in_order_join_to_the_answer(server: str) -> None:
    client = sdk(server)
    events = list(client.responses.create(input="Count to three.", stream=True, **GREEDY))  # type: ignore[arg-type]

    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and kinds[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert kinds[4 + len(deltas) :][:3] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    text = "".join(e.delta for e in deltas)  # type: ignore[union-attr]
    assert final.output_text == text and events[-4].text == text  # type: ignore[union-attr]
    assert events[0].response.id == final.id  # type: ignore[union-attr]
    # The same request unstreamed gives the same greedy answer, and the stored turn holds it.
    assert client.responses.retrieve(final.id).output_text == text


def test_previous_response_id_continues_the_conversation(server: str, prompts: Prompts) -> None:
    client = sdk(server)
    first = client.responses.create(input="My name is Ada.", instructions="Be brief.", **GREEDY)  # type: ignore[arg-type]
    prompts.clear()
    second = client.responses.create(
        input="What is my name?",
        previous_response_id=first.id,
        **GREEDY,  # type: ignore[arg-type]
    )

    # The prompt the server built for the second turn holds the first one, the model's answer included.
    assert prompts[-1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"},
    ]
    assert second.previous_response_id == first.id
    session = second.model_dump()["session_id"]
    assert session == first.model_dump()["session_id"]
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens

    # Continuing the first response again forks: a branch with the first turn, the second left alone.
    prompts.clear()
    fork = client.responses.create(input="And my age?", previous_response_id=first.id, **GREEDY)  # type: ignore[arg-type]
    assert prompts[-1][-2:] == [
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And my age?"},
    ]
    fork_session = fork.model_dump()["session_id"]
    assert fork_session != session
    view = httpx.get(f"{server}/chat/{fork_session}", headers=auth()).json()
    assert [m["content"] for m in view["messages"]][-2:] == ["And my age?", fork.output_text]
    original = httpx.get(f"{server}/chat/{session}", headers=auth()).json()
    assert [m["response_id"] for m in original["messages"]] == [None, first.id, None, second.id]


def test_other_keys_and_unknown_ids_get_404(server: str) -> None:
    mine = sdk(server).responses.create(input="Hi", **GREEDY)  # type: ignore[arg-type]
    other = sdk(server, key=ADMIN_KEY)
    for call in (
        lambda: other.responses.retrieve(mine.id),
        lambda: other.responses.create(input="Hi", previous_response_id=mine.id, **GREEDY),  # type: ignore[arg-type]
        lambda: other.responses.delete(mine.id),
        lambda: sdk(server).responses.retrieve("resp_nothing"),
        lambda: sdk(server).responses.retrieve("chatcmpl-123"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert sdk(server).responses.retrieve(mine.id).id == mine.id


def test_delete_removes_the_turn_and_those_after_it(server: str) -> None:
    client = sdk(server)
    first = client.responses.create(input="One", **GREEDY)  # type: ignore[arg-type]
    second = client.responses.create(input="Two", previous_response_id=first.id, **GREEDY)  # type: ignore[arg-type]
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    assert client.responses.retrieve(first.id).output_text == first.output_text
    session = httpx.get(f"{server}/chat/{first.model_dump()['session_id']}", headers=auth()).json()
    assert [m["content"] for m in session["messages"]] == ["One", first.output_text]


def test_store_false_keeps_nothing(server: str) -> None:
    client = sdk(server)
    before = httpx.get(f"{server}/chat", headers=auth()).json()["sessions"]
    response = client.responses.create(input="Hi", store=False, **GREEDY)  # type: ignore[arg-type]
    assert response.output_text and response.model_dump()["session_id"] is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    assert httpx.get(f"{server}/chat", headers=auth()).json()["sessions"] == before


def test_input_items_become_the_conversation(server: str, prompts: Prompts) -> None:
    prompts.clear()
    items = [
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Bonjour"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Thanks"}]},
    ]
    response = sdk(server).responses.create(input=items, **GREEDY)  # type: ignore[arg-type]
    assert prompts[-1] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Thanks"},
    ]
    session = httpx.get(f"{server}/chat/{response.model_dump()['session_id']}", headers=auth()).json()
    assert [m["content"] for m in session["messages"]] == ["Hello", "Bonjour", "Thanks", response.output_text]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"text": {"format": {"type": "json_object"}}}, "text"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"background": True}, "background"),
    ],
)
def test_tools_and_structured_output_are_refused_for_now(server: str, extra: dict[str, object], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).responses.create(input="Hi", **GREEDY, **extra)  # type: ignore[arg-type]
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == param and "not supported" in body["message"]


def test_needs_the_chat_scope_and_a_known_model(server: str) -> None:
    from tests.conftest import DOCS_KEY

    with pytest.raises(openai.PermissionDeniedError):
        sdk(server, key=DOCS_KEY).responses.create(input="Hi", **GREEDY)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(server).responses.create(input="Hi", model="gpt-4o", max_output_tokens=4)
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert USER_KEY  # the default key of sdk()


def test_answers_from_documents_carry_sources_and_whether_they_draw_on_them(server: str) -> None:
    name, data = sample("md")
    uploaded = httpx.post(f"{server}/upload", files={"file": (name, data)}, headers=auth(ADMIN_KEY), timeout=120)
    assert uploaded.status_code == 200, uploaded.text
    client = sdk(server, key=ADMIN_KEY)
    response = client.responses.create(
        input="What is the access code of the Zanzibar vault?",
        extra_body={"use_documents": True},
        **GREEDY,  # type: ignore[arg-type]
    )
    record = response.model_dump()
    assert record["sources"][0]["document_id"] == uploaded.json()["document_id"]
    assert isinstance(record["grounded"], bool)
    again = client.responses.retrieve(response.id).model_dump()
    assert again["sources"] == record["sources"] and again["grounded"] == record["grounded"]
    plain = client.responses.create(input="Say hello.", **GREEDY).model_dump()  # type: ignore[arg-type]
    assert plain.get("sources") is None and plain.get("grounded") is None
