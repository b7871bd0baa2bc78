"""One module per command group; each handler is `(args, ctx) -> exit code`."""
