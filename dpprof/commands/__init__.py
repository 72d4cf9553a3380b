"""The subcommands, one module each: ``HELP`` (one line), ``prepare_parser(parser)`` and ``run(args) -> int``.

A command parses, calls one function of a stage and prints; the work is in the stages (collect, trace, analyze,
report). Modules here import heavy libraries (torch, matplotlib) only inside ``run``.
"""
