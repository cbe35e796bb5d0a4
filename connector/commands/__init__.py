"""The ``kafka-stripe`` subcommands, one module each."""
