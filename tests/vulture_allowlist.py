"""Names vulture cannot see used: each is used through a signature, an annotation or an entry point.

Passed to vulture beside the package by tests/test_dead_code.py; never imported.
"""
# ruff: noqa
NoReturn          # vmxdbg/cli.py: in a string annotation, OneLineParser.error -> "NoReturn"

complete_event    # prompt_toolkit's Completer.get_completions(document, complete_event) signature
style             # pytest's Item.repr_failure(excinfo, style=None) signature
exc_type, tb      # the context-manager protocol: __exit__(exc_type, exc, tb)
