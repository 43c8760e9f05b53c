"""Extra ``fdl`` subcommands, one module per area; each module exports ``COMMANDS`` (see fdlcli/cli.py)."""
