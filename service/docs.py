"""`make docs`: rewrite the README's generated tables (between their marker comments) from the code
that defines them, so the README cannot drift from the settings model."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from service.cli import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"
SECTIONS = {"settings": settings_table}


def marked(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {name}:begin[^>]*-->\n)(.*?)(<!-- {name}:end -->)", re.S)


def rendered(text: str) -> str:
    for name, render in SECTIONS.items():
        text, found = marked(name).subn(lambda m: m.group(1) + render() + "\n" + m.group(3), text)
        if not found:
            raise SystemExit(f"docs: README has no '<!-- {name}:begin -->' section")
    return text


def main() -> int:
    README.write_text(rendered(README.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
