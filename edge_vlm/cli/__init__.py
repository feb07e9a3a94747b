"""The `edge-vlm` command: one module per verb, each importing its heavy dependencies inside `run`."""
