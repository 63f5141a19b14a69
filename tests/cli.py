"""Running the `nmx` command in-process, the way the tests of every package do."""

import sys


def run_cli(args, capsys, monkeypatch):
    """`nmx ARGS` through `nmx.cli.main`: (exit code, stdout, stderr)."""
    from nmx.cli import main

    monkeypatch.setattr(sys, "argv", ["nmx", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err
