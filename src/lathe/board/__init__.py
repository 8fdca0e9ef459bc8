"""The Board: lathe's web UI (`lathe webui`) and the chat page (`lathe webchat`), drawn by gradio.

The forms are generated from the config schema; a run started here writes a YAML and runs
the same `lathe train` command in a subprocess, so a Board run and a shell run are one thing.
Needs the `board` extra (`pip install lathe[board]`).
"""
