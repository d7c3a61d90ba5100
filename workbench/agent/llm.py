"""The LLM client: the `openai` package against any OpenAI-compatible endpoint.

Retries: the openai client retries 429, 408/409, 5xx, timeouts and connection errors with
exponential backoff and honours `Retry-After` (we set how many times); what still fails is an
`InfrastructureError`, which ends the attempt as the provider's fault, not the model's.
Budget: before each request the worst case (prompt + max output tokens at the model's prices)
must fit in what is left; afterwards the real usage is recorded. The API key is read from the
environment here and handed to nobody else.
"""

import os
from dataclasses import dataclass

import openai

from .registry import ModelEntry

MAX_RETRIES = 4
REQUEST_TIMEOUT_S = 600.0
CHARS_PER_TOKEN = 3.5  # a conservative estimate for the pre-request budget check


class InfrastructureError(RuntimeError):
    """The endpoint failed after retries (or refused the key): not the model's failure."""


class BudgetExceeded(RuntimeError):
    """The next request could cost more than the budget has left."""


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def estimate_tokens(messages: list[dict], tools: list[dict]) -> int:
    return int(sum(len(str(m.get("content") or "")) + len(str(m.get("tool_calls") or "")) for m in messages)
               / CHARS_PER_TOKEN + len(str(tools)) / CHARS_PER_TOKEN)


class LLMClient:
    def __init__(self, entry: ModelEntry, base_url: str | None = None, timeout_s: float = REQUEST_TIMEOUT_S,
                 max_retries: int = MAX_RETRIES):
        self.entry = entry
        key = os.environ.get(entry.api_key_env, "") if entry.api_key_env else "no-key"
        if entry.api_key_env and not key:
            raise InfrastructureError(f"model {entry.name}: set {entry.api_key_env} in the environment")
        self._client = openai.OpenAI(base_url=base_url or entry.base_url, api_key=key, timeout=timeout_s,
                                     max_retries=max_retries)
        self.usage = Usage()

    def check_budget(self, messages: list[dict], tools: list[dict], max_tokens: int, usd_left: float,
                     tokens_left: int) -> None:
        prompt = estimate_tokens(messages, tools)
        worst_tokens = prompt + max_tokens
        worst_usd = self.entry.cost(prompt, max_tokens)
        if worst_tokens > tokens_left:
            raise BudgetExceeded(f"the next request could use {worst_tokens} tokens; {tokens_left} are left")
        if worst_usd > usd_left:
            raise BudgetExceeded(f"the next request could cost ${worst_usd:.4f}; ${usd_left:.4f} is left")

    def complete(self, messages: list[dict], tools: list[dict], max_tokens: int) -> tuple[dict, Usage]:
        """One chat completion with tools -> (assistant message as a dict, this call's usage)."""
        request = {"model": self.entry.model_id, "messages": messages, "tools": tools,
                   self.entry.token_param: max_tokens, **self.entry.params}
        try:
            response = self._client.chat.completions.create(**request)
        except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                openai.InternalServerError, openai.AuthenticationError, openai.PermissionDeniedError) as err:
            raise InfrastructureError(f"{type(err).__name__}: {err}") from None
        except openai.APIStatusError as err:
            raise InfrastructureError(f"HTTP {err.status_code}: {err.message}") from None
        if not response.choices:
            raise InfrastructureError("the endpoint returned no choices")
        message = response.choices[0].message
        out = {"role": "assistant", "content": message.content or ""}
        if message.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.function.name, "arguments": c.function.arguments}}
                                 for c in message.tool_calls]
        usage = Usage()
        if response.usage is not None:
            details = getattr(response.usage, "prompt_tokens_details", None)
            usage = Usage(response.usage.prompt_tokens, response.usage.completion_tokens,
                          getattr(details, "cached_tokens", 0) or 0)
        usage.cost_usd = self.entry.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        for field in ("prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd"):
            setattr(self.usage, field, getattr(self.usage, field) + getattr(usage, field))
        return out, usage


def shorten_old_tool_outputs(messages: list[dict], context_tokens: int, keep_last: int = 6) -> list[dict]:
    """Keep the conversation inside the context window: the oldest tool outputs are cut to a
    stub first, then newer ones; the latest message always stays whole."""
    budget_chars = int(context_tokens * CHARS_PER_TOKEN * 0.8)
    out = [dict(m) for m in messages]
    total = sum(len(str(m.get("content") or "")) for m in out)
    for candidates in (out[:-keep_last], out[:-1]):  # the oldest first, then all but the latest
        for m in candidates:
            if total <= budget_chars:
                return out
            if m.get("role") == "tool" and len(m["content"]) > 200:
                total -= len(m["content"]) - 120
                m["content"] = m["content"][:100] + " ... [older tool output shortened]"
    return out
