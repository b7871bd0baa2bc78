"""The registry: providers, models, deployments, keys, defaults and alert rules."""
