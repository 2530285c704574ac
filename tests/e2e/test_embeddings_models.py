"""Embeddings and the model list through the OpenAI SDK."""

from __future__ import annotations

import openai
import pytest

from tests.support.gateway import GatewayInstance


@pytest.mark.parametrize("route", ["embed", "demo", "azure"])
def test_embeddings(gateway: GatewayInstance, route: str) -> None:
    client = gateway.client()
    result = client.embeddings.create(model=route, input=["one", "two"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == len(result.data[1].embedding) > 0
    assert result.data[0].embedding != result.data[1].embedding
    again = client.embeddings.create(model=route, input="one", encoding_format="float")
    assert again.data[0].embedding == pytest.approx(result.data[0].embedding, rel=1e-6)
    assert result.usage.prompt_tokens > 0


async def test_async_embeddings(gateway: GatewayInstance) -> None:
    async with gateway.async_client() as client:
        result = await client.embeddings.create(model="embed", input="hello")
    assert len(result.data) == 1


def test_embeddings_on_a_provider_without_them_is_a_clear_error(gateway: GatewayInstance) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().embeddings.create(model="claude", input="hello")
    assert "embeddings" in info.value.message


def test_models_lists_the_tenants_routes(gateway: GatewayInstance) -> None:
    ids = {m.id for m in gateway.client().models.list()}
    assert {"chat", "claude", "azure", "demo", "embed"} <= ids
    assert [m.id for m in gateway.client("limited").models.list()] == ["demo"]


def test_retrieve_model(gateway: GatewayInstance) -> None:
    model = gateway.client().models.retrieve("chat")
    assert model.id == "chat" and model.object == "model" and model.owned_by == "gateway"
    with pytest.raises(openai.NotFoundError):
        gateway.client().models.retrieve("nope")
    with pytest.raises(openai.PermissionDeniedError):
        gateway.client("limited").models.retrieve("chat")
