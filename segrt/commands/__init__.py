"""One module per `segrt` subcommand; each exposes ``register(app)``. Heavy imports stay inside commands."""
