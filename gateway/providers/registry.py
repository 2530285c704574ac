"""Provider kind -> constructor. Adding a provider kind is one entry here plus its dialect."""

from __future__ import annotations

from collections.abc import Callable

from gateway.providers.anthropic import AnthropicDialect
from gateway.providers.azure_openai import AzureOpenAIDialect
from gateway.providers.base import Provider
from gateway.providers.http import HttpProvider
from gateway.providers.mock import MockProvider
from gateway.providers.openai import OpenAIDialect
from gateway.settings import ProviderSettings

_FACTORIES: dict[str, Callable[[str, ProviderSettings], Provider]] = {
    "openai": lambda name, s: HttpProvider(name, s, OpenAIDialect()),
    "azure-openai": lambda name, s: HttpProvider(name, s, AzureOpenAIDialect()),
    "anthropic": lambda name, s: HttpProvider(name, s, AnthropicDialect()),
    "mock": MockProvider,
}


def build_providers(configs: dict[str, ProviderSettings]) -> dict[str, Provider]:
    return {name: _FACTORIES[cfg.kind](name, cfg) for name, cfg in configs.items()}
