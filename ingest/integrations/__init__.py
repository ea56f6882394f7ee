"""Integrations that record LLM and tool calls by themselves.

- `instrument_openai(client, session=None)`: OpenAI Python SDK (chat completions, Responses API).
- `instrument_anthropic(client, session=None)`: Anthropic Python SDK (messages).
- `AgentLedgerCallbackHandler(session=None)`: LangChain / LangGraph callback handler.

Each is imported on first use, so the provider SDKs stay optional: install the extras
`agentledger[openai]`, `agentledger[anthropic]` or `agentledger[langchain]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest.integrations.anthropic_sdk import instrument_anthropic
    from ingest.integrations.langchain_handler import AgentLedgerCallbackHandler
    from ingest.integrations.openai_sdk import instrument_openai

__all__ = ["AgentLedgerCallbackHandler", "instrument_anthropic", "instrument_openai"]

_WHERE = {
    "instrument_openai": "ingest.integrations.openai_sdk",
    "instrument_anthropic": "ingest.integrations.anthropic_sdk",
    "AgentLedgerCallbackHandler": "ingest.integrations.langchain_handler",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ingest.integrations' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
