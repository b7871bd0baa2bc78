"""The provider service: the only place that calls upstream LLM APIs and holds their secrets."""
