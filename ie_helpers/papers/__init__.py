"""One module per paper: its prompts and formatting where they are its own, its experiment plan and its
claims with their verdict rules. The core (``ie_helpers.*``) never imports these (tests/test_import_graph.py)."""
