"""The router: the front door. Auth, validation, model resolution, attempts
over deployments and fallbacks, and OpenAI-exact responses."""
