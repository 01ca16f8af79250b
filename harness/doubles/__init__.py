"""Protocol doubles: local stand-ins for what the system talks to outside itself."""

from pathlib import Path

# An executable stand-in for the `claude` CLI (the command tool kind runs it).
CLAUDE = Path(__file__).with_name("claude")
