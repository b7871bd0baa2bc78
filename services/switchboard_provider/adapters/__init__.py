"""Upstream adapters. Each turns one provider kind's API into the provider
contract: OpenAI-shaped events out, usage reported to the meter."""
