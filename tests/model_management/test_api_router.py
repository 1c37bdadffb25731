"""GET /models, POST /models/{name}/load and /unload over the app, on the tiny models."""

from __future__ import annotations

from typing import Any

import httpx

from inference_api.modeling.builtin import BUILTIN_MODEL
from tests.conftest import ADMIN_KEY, DOCS_KEY, USER_KEY, assert_error, auth


async def models(client: httpx.AsyncClient, key: str = USER_KEY) -> dict[str, dict[str, Any]]:
    response = await client.get("/models", headers=auth(key))
    assert response.status_code == 200, response.text
    listed = response.json()["models"]
    by_name = {m["base_model"]: m for m in listed}
    assert len(by_name) == len(listed), "a base model is listed twice"
    return by_name


async def test_list_models(client: httpx.AsyncClient) -> None:
    listed = await models(client)
    assert set(listed) == {"tiny", "tiny-copy", BUILTIN_MODEL}
    assert BUILTIN_MODEL == "smollm2-135m-instruct"

    tiny = listed["tiny"]
    assert tiny["versions"] == ["base", "alpha", "beta"]
    assert tiny["description"] == "random 2-layer llama"
    assert tiny["loaded"] is True
    assert tiny["loaded_versions"] == ["base"]

    copy = listed["tiny-copy"]
    assert copy["versions"] == ["base"]
    assert copy["loaded"] is False
    assert copy["loaded_versions"] == []

    builtin = listed[BUILTIN_MODEL]
    assert builtin["versions"] == ["base"]
    assert builtin["loaded"] is False
    assert builtin["description"]


async def test_any_valid_key_may_list_models(client: httpx.AsyncClient) -> None:
    for key in (ADMIN_KEY, USER_KEY, DOCS_KEY):
        assert "tiny" in await models(client, key)
    bearer = await client.get("/models", headers={"Authorization": f"Bearer {DOCS_KEY}"})
    assert bearer.status_code == 200


async def test_models_need_a_valid_key(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/models"), 401, "UNAUTHORIZED")
    assert_error(await client.get("/models", headers=auth("sk-wrong-0123456789abcdef")), 401, "UNAUTHORIZED")
    assert_error(await client.post("/models/tiny-copy/load"), 401, "UNAUTHORIZED")
    assert_error(await client.post("/models/tiny-copy/unload"), 401, "UNAUTHORIZED")
    # Authentication comes before the model lookup: no probing of names without a key.
    assert_error(await client.post("/models/no-such-model/load"), 401, "UNAUTHORIZED")
    assert (await models(client))["tiny-copy"]["loaded"] is False


async def test_load_a_model(client: httpx.AsyncClient) -> None:
    response = await client.post("/models/tiny-copy/load", headers=auth(ADMIN_KEY))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["base_model"] == "tiny-copy"
    assert body["version"] == "base"
    assert body["loaded"] is True
    assert body["load_time"] >= 0
    listed = await models(client)
    assert listed["tiny-copy"]["loaded"] is True
    assert listed["tiny-copy"]["loaded_versions"] == ["base"]


async def test_load_with_bearer_admin_key(client: httpx.AsyncClient) -> None:
    response = await client.post("/models/tiny-copy/load", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
    assert (await models(client))["tiny-copy"]["loaded"] is True


async def test_load_a_version(client: httpx.AsyncClient) -> None:
    response = await client.post("/models/tiny/load", json={"version": "alpha"}, headers=auth(ADMIN_KEY))
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "alpha"
    assert (await models(client))["tiny"]["loaded_versions"] == ["alpha", "base"]
    status = (await client.get("/status", headers=auth())).json()
    loaded = {(m["base_model"], m["version"]) for m in status["cached_model_info"] if m["loaded"]}
    assert loaded == {("tiny", "base"), ("tiny", "alpha")}


async def test_loading_twice_is_harmless(client: httpx.AsyncClient) -> None:
    for _ in range(2):
        response = await client.post("/models/tiny/load", json={"version": None}, headers=auth(ADMIN_KEY))
        assert response.status_code == 200, response.text
        assert response.json()["version"] == "base"
    assert (await models(client))["tiny"]["loaded_versions"] == ["base"]


async def test_load_needs_the_admin_scope(client: httpx.AsyncClient) -> None:
    for key in (USER_KEY, DOCS_KEY):
        error = assert_error(await client.post("/models/tiny-copy/load", headers=auth(key)), 403, "FORBIDDEN")
        assert "admin" in str(error["message"])
        assert_error(await client.post("/models/tiny-copy/unload", headers=auth(key)), 403, "FORBIDDEN")
    assert (await models(client))["tiny-copy"]["loaded"] is False


async def test_load_unknown_model_or_version(client: httpx.AsyncClient) -> None:
    error = assert_error(
        await client.post("/models/no-such-model/load", headers=auth(ADMIN_KEY)), 404, "MODEL_NOT_FOUND"
    )
    assert "no-such-model" in str(error["message"])
    response = await client.post("/models/tiny/load", json={"version": "gamma"}, headers=auth(ADMIN_KEY))
    error = assert_error(response, 404, "MODEL_NOT_FOUND")
    assert "gamma" in str(error["message"])
    response = await client.post("/models/tiny-copy/load", json={"version": "alpha"}, headers=auth(ADMIN_KEY))
    assert_error(response, 404, "MODEL_NOT_FOUND")
    assert (await models(client))["tiny"]["loaded_versions"] == ["base"]


async def test_load_body_is_validated(client: httpx.AsyncClient) -> None:
    for body in ({"version": 1}, {"version": "alpha", "extra": True}, ["alpha"]):
        response = await client.post("/models/tiny/load", json=body, headers=auth(ADMIN_KEY))
        assert_error(response, 422, "VALIDATION_ERROR")


async def test_unload_a_model(client: httpx.AsyncClient) -> None:
    assert (await client.post("/models/tiny-copy/load", headers=auth(ADMIN_KEY))).status_code == 200
    response = await client.post("/models/tiny-copy/unload", headers=auth(ADMIN_KEY))
    assert response.status_code == 200, response.text
    assert response.json() == {"base_model": "tiny-copy", "unloaded_versions": 1}
    listed = await models(client)
    assert listed["tiny-copy"]["loaded"] is False
    assert listed["tiny-copy"]["loaded_versions"] == []
    assert listed["tiny"]["loaded"] is True

    again = await client.post("/models/tiny-copy/unload", headers=auth(ADMIN_KEY))
    assert again.status_code == 200, again.text
    assert again.json()["unloaded_versions"] == 0


async def test_unloaded_model_still_serves_by_loading_again(client: httpx.AsyncClient) -> None:
    await client.post("/models/tiny-copy/load", headers=auth(ADMIN_KEY))
    await client.post("/models/tiny-copy/unload", headers=auth(ADMIN_KEY))
    body = {"prompt": "Hi", "max_new_tokens": 2, "base_model": "tiny-copy"}
    response = await client.post("/infer", json=body, headers=auth())
    assert response.status_code == 200, response.text
    assert (await models(client))["tiny-copy"]["loaded"] is True


async def test_unloading_the_default_model_is_refused(client: httpx.AsyncClient) -> None:
    error = assert_error(await client.post("/models/tiny/unload", headers=auth(ADMIN_KEY)), 422, "VALIDATION_ERROR")
    assert "default" in str(error["message"])
    assert (await models(client))["tiny"]["loaded"] is True
    infer = await client.post("/infer", json={"prompt": "Hi", "max_new_tokens": 1}, headers=auth())
    assert infer.status_code == 200, infer.text


async def test_unload_unknown_model(client: httpx.AsyncClient) -> None:
    assert_error(await client.post("/models/no-such-model/unload", headers=auth(ADMIN_KEY)), 404, "MODEL_NOT_FOUND")


async def test_least_recently_used_is_evicted_at_cache_size(client: httpx.AsyncClient) -> None:
    # CACHE_SIZE is 2: tiny:base (the default, used again just below) and tiny-copy:base fill it.
    assert (await client.post("/models/tiny-copy/load", headers=auth(ADMIN_KEY))).status_code == 200
    infer = await client.post("/infer", json={"prompt": "Hi", "max_new_tokens": 1}, headers=auth())
    assert infer.status_code == 200, infer.text
    assert (
        await client.post("/models/tiny/load", json={"version": "beta"}, headers=auth(ADMIN_KEY))
    ).status_code == 200
    listed = await models(client)
    assert listed["tiny"]["loaded_versions"] == ["base", "beta"]
    assert listed["tiny-copy"]["loaded"] is False


async def test_loading_other_models_keeps_the_default_loaded(client: httpx.AsyncClient) -> None:
    for path, body in (("/models/tiny/load", {"version": "alpha"}), ("/models/tiny-copy/load", None)):
        assert (await client.post(path, json=body, headers=auth(ADMIN_KEY))).status_code == 200
    assert "base" in (await models(client))["tiny"]["loaded_versions"]
