"""The `gemini` provider kind: request mapping, response mapping, error
mapping, and the adapter that drives Google's SDK with them."""

from switchboard_provider.adapters.gemini.adapter import GeminiAdapter

__all__ = ["GeminiAdapter"]
