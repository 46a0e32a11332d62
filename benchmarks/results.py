"""benchmarks/RESULTS.md is shared by several benchmarks: each owns one ``## `` section and
replaces only that one."""
from __future__ import annotations

import os


def write_section(path: str, title: str, lines: list) -> None:
    """Replace the section headed ``title`` (up to the next ``## ``) in ``path``, or append it;
    every other section is left as it is."""
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    block = "\n".join([title, ""] + lines).rstrip("\n") + "\n"
    start = text.find(title + "\n")
    if start < 0 and text.endswith(title):
        start = len(text) - len(title)
    if start >= 0:
        nxt = text.find("\n## ", start + len(title))
        rest = text[nxt + 1:] if nxt >= 0 else ""
        text = text[:start] + block + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with open(path, "w") as f:
        f.write(text)
