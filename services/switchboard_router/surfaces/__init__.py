"""The HTTP APIs of the systems Switchboard replaces (the seed documents), each a
thin mapping onto RouterService: one module per surface renders its envelope,
stream framing and error shape; admission, routing, limits, budgets and
accounting stay RouterService's."""
