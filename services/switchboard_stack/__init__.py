"""The local stack: broker, services and the Envoy edge as processes on this
machine, for `make run` (foreground) and `make up`/`make down` (background)."""
