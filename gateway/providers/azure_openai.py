"""Azure OpenAI: the OpenAI dialect at deployment URLs, with `api-version` and an `api-key` header.

The route target's `model` names the Azure deployment.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from gateway.providers.openai import OpenAIDialect
from gateway.settings import ProviderSettings


class AzureOpenAIDialect(OpenAIDialect):
    def _url(self, settings: ProviderSettings, deployment: str, op: str) -> str:
        base = (settings.base_url or "").rstrip("/")
        return f"{base}/openai/deployments/{quote(deployment, safe='')}/{op}?api-version={settings.api_version}"

    def chat_url(self, settings: ProviderSettings, model: str) -> str:
        return self._url(settings, model, "chat/completions")

    def embeddings_url(self, settings: ProviderSettings, model: str) -> str | None:
        return self._url(settings, model, "embeddings")

    def auth_headers(self, settings: ProviderSettings) -> dict[str, str]:
        return {"api-key": settings.api_key} if settings.api_key else {}

    def encode_chat(self, body: dict[str, Any], model: str, settings: ProviderSettings) -> dict[str, Any]:
        out = super().encode_chat(body, model, settings)
        # The deployment in the URL decides the model; Azure ignores `model` in the body.
        out.pop("model", None)
        return out

    def encode_embeddings(self, body: dict[str, Any], model: str, settings: ProviderSettings) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k != "model"}
