"""Public list prices (USD per 1M input / output tokens) of the models in the data sets, for
cost curves in ``routegate eval --models``.

Source: public list prices as of 2024 (the providers' pricing pages in the second half of 2024,
transcribed by hand; prices change, so check them before relying on a number):

* ``openai``, ``anthropic``, ``google`` (Gemini 1.5, prompts up to 128k tokens, after the August
  2024 Flash cut), ``mistral`` (La Plateforme, after the September 2024 cut), ``cohere``
  (the August 2024 models), ``deepseek``, ``01.ai``, ``reka``: the model maker's own API.
* ``together``: Together AI's serverless price for that model (the "Turbo" endpoint for
  Llama 3/3.1), a typical price for an open-weights model hosted by a third party.
* ``size tier``: an open model without its own list price, priced at Together AI's 2024 price
  for its parameter count (up to 4B $0.10, 4-8B $0.20, 8-21B $0.30, 21-41B $0.80, 41-80B $0.90).
  These are estimates, not quotes.

The RouterBench files carry their own per-prompt cost (``meta.cost``, USD); the evaluation uses
those instead of this table.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from routers.model_names import match_model


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens, and where the number comes from."""

    input: float
    output: float
    source: str

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        """USD for one call."""
        return (input_tokens * self.input + output_tokens * self.output) / 1e6


def _tier(billions: float) -> Price:
    for limit, usd in ((4, 0.10), (8, 0.20), (21, 0.30), (41, 0.80), (80, 0.90)):
        if billions <= limit:
            return Price(usd, usd, "size tier")
    raise ValueError(f"no size tier for {billions}B")


# keys: model names as the data spell them (compared in normal form, routers.model_names)
LIST_PRICES: dict[str, Price] = {
    # OpenAI
    "o1-preview": Price(15.0, 60.0, "openai"),
    "o1-mini": Price(3.0, 12.0, "openai"),
    "gpt-4o-2024-08-06": Price(2.5, 10.0, "openai"),
    "gpt-4o-2024-05-13": Price(5.0, 15.0, "openai"),
    "chatgpt-4o-latest-24-09-07": Price(5.0, 15.0, "openai"),
    "gpt-4o-mini": Price(0.15, 0.60, "openai"),
    "gpt-4-turbo-2024-04-09": Price(10.0, 30.0, "openai"),
    "gpt-4-1106-preview": Price(10.0, 30.0, "openai"),
    "gpt-4-0314": Price(30.0, 60.0, "openai"),
    "gpt-4": Price(30.0, 60.0, "openai"),
    "gpt-3.5-turbo-0125": Price(0.5, 1.5, "openai"),
    "gpt-3.5-turbo-1106": Price(1.0, 2.0, "openai"),
    # Anthropic
    "claude-3-5-sonnet": Price(3.0, 15.0, "anthropic"),
    "claude-3-opus": Price(15.0, 75.0, "anthropic"),
    "claude-3-sonnet": Price(3.0, 15.0, "anthropic"),
    "claude-3-haiku": Price(0.25, 1.25, "anthropic"),
    "claude-v2": Price(8.0, 24.0, "anthropic"),
    "claude-v1": Price(8.0, 24.0, "anthropic"),
    "claude-instant-v1": Price(0.8, 2.4, "anthropic"),
    # Google (the experimental snapshots priced as their model)
    "gemini-1.5-pro": Price(3.5, 10.5, "google"),
    "gemini-1.5-pro-exp-0801": Price(3.5, 10.5, "google"),
    "gemini-1.5-pro-exp-0827": Price(3.5, 10.5, "google"),
    "gemini-1.5-flash": Price(0.075, 0.30, "google"),
    "gemini-1.5-flash-exp-0827": Price(0.075, 0.30, "google"),
    # Mistral, DeepSeek, 01.AI, Reka
    "Mistral-Large-2": Price(2.0, 6.0, "mistral"),
    "Mistral-Large-Instruct-2407": Price(2.0, 6.0, "mistral"),
    "Mistral-Nemo-Instruct-2407": Price(0.15, 0.15, "mistral"),
    "command-r": Price(0.15, 0.60, "cohere"),
    "command-r-plus": Price(2.5, 10.0, "cohere"),
    "DeepSeek-Coder-V2-Instruct": Price(0.14, 0.28, "deepseek"),
    "deepseek-v2-chat": Price(0.14, 0.28, "deepseek"),
    "deepseek-v2-coder": Price(0.14, 0.28, "deepseek"),
    "deepseek-v2.5": Price(0.14, 0.28, "deepseek"),
    "yi-large": Price(3.0, 3.0, "01.ai"),
    "yi-large-preview": Price(3.0, 3.0, "01.ai"),
    "reka-core": Price(10.0, 25.0, "reka"),
    "reka-flash": Price(0.8, 2.0, "reka"),
    # open weights, Together AI list prices
    "Llama-3.1-405B-Inst": Price(5.0, 5.0, "together"),
    "Llama-3.1-70B-Instruct": Price(0.88, 0.88, "together"),
    "Llama-3.1-8B-Instruct": Price(0.18, 0.18, "together"),
    "Llama-3-70B-Instruct": Price(0.88, 0.88, "together"),
    "Llama-3-8B-Instruct": Price(0.18, 0.18, "together"),
    "Llama-3.2-3B-Instruct": Price(0.06, 0.06, "together"),
    "llama-2-70b-chat": Price(0.9, 0.9, "together"),
    "code-llama-instruct-34b-chat": Price(0.78, 0.78, "together"),
    "Qwen2.5-72B-Instruct": Price(1.2, 1.2, "together"),
    "Qwen2.5-7B-Instruct": Price(0.3, 0.3, "together"),
    "Qwen2-72B-Instruct": Price(0.9, 0.9, "together"),
    "gemma-2-27b-it": Price(0.8, 0.8, "together"),
    "gemma-2-9b-it": Price(0.3, 0.3, "together"),
    "Mixtral-8x7B-Instruct-v0.1": Price(0.6, 0.6, "together"),
    "Mistral-7B-Instruct-v0.2": Price(0.2, 0.2, "together"),
    "Yi-34B-Chat": Price(0.8, 0.8, "together"),
    "WizardLM-13B-V1.2": Price(0.3, 0.3, "together"),
    # open weights without a list price of their own: Together's size tier
    "Qwen2.5-32B-Instruct": _tier(32),
    "Qwen2.5-Coder-7B-Instruct": _tier(7),
    "Qwen2.5-3B-Instruct": _tier(3),
    "Qwen2.5-1.5B-Instruct": _tier(1.5),
    "deepseek-coder-6.7b-instruct": _tier(6.7),
    "Qwen2-7B-Instruct": _tier(7),
    "Yi-1.5-34B-Chat": _tier(34),
    "Yi-1.5-9B-Chat": _tier(9),
    "internlm2_5-20b-chat": _tier(20),
    "Phi-3-medium-4k-instruct": _tier(14),
    "Phi-3-mini-4k-instruct": _tier(3.8),
    "Phi-3.5-mini-instruct": _tier(3.8),
    "gemma-2-2b-it": _tier(2.6),
    "Athene-70B": _tier(70),
    "Mistral-7B-Instruct-v0.3": _tier(7),
    "codegemma-7b": _tier(7),
    "llama-3.1-nemotron-51b-instruct": _tier(51),
    "llama-3.3-nemotron-super-49b-v1": _tier(49),
    "llama3-chatqa-1.5-70b": _tier(70),
    "llama3-chatqa-1.5-8b": _tier(8),
}

_PROVIDER = re.compile(r"(-fp8)?@[\w.-]+$")  # ZeroEval's "@together", "-fp8@together" hosting suffixes


def list_price(model: str) -> Price | None:
    """The list price of ``model`` (any spelling ``match_model`` understands), or None."""
    known = match_model(_PROVIDER.sub("", model), LIST_PRICES)
    return None if known is None else LIST_PRICES[known]


def parse_prices(spec: str) -> dict[str, Price]:
    """``A=in/out,B=in/out`` (USD per 1M tokens) -> {model: Price}; ValueError on a bad entry."""
    prices = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        model, _, pair = entry.rpartition("=")
        input_usd, _, output_usd = pair.partition("/")
        try:
            price = Price(float(input_usd), float(output_usd or input_usd), "--prices")
        except ValueError:
            raise ValueError(f"bad price {entry!r}: expected MODEL=INPUT/OUTPUT (USD per 1M tokens)") from None
        if not model or not (0 <= price.input < math.inf and 0 <= price.output < math.inf):  # NaN fails too
            raise ValueError(f"bad price {entry!r}: expected MODEL=INPUT/OUTPUT (USD per 1M tokens)")
        prices[model] = price
    return prices
