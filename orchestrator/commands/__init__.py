"""One module per `proxyscale` command, each with `add_parser(subparsers)` and `run(args) -> int`."""
