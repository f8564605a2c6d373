"""Where the benchmarks write: their own marked section of BENCHMARKS.md, nothing else."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def write_section(block: str, path: Path, start: str, end: str, title: str) -> None:
    """Replace only the text between ``start`` and ``end`` (appending the section if missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    section = f"{start}\n{block}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")
