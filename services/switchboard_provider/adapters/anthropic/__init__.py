"""The `anthropic` provider kind: request mapping, response and stream
mapping, error mapping, and the adapter that ties them to the SDK."""
