"""``routegate demo``: routegate in front of a small local LLM (``local_llm``), no key, no network. Not part of the gateway."""
