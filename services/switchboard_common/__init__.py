"""What every Switchboard service shares: settings, config, errors, logging,
interceptors and the gRPC server bootstrap."""
