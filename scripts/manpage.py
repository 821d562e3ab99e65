#!/usr/bin/env python3
"""Write man/kvm-digest.1 from the CLI's own parser (argparse-manpage).

The page is generated, never edited by hand, so it cannot drift from
`--help`; tests/test_tooling.py fails when the parser changed and this was
not run. The wheel installs the page as share/man/man1/kvm-digest.1.

    .venv/bin/python scripts/manpage.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "man" / "kvm-digest.1"


def render() -> str:
    """The man page text; the same on every machine (fixed width, no date).

    No version either: it comes from git and changes with every commit, so a
    committed page naming it would always be stale (`kvm-digest --version`
    says it).
    """
    from argparse_manpage.manpage import Manpage

    from bot.cli import build_parser

    # argparse wraps to the terminal's width: fix it, so the page is reproducible.
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"
    try:
        page = Manpage(
            build_parser(),
            _data={
                "project_name": "kvm-digest",
                "version": "",
                "date": "see kvm-digest --version",
                "manual_title": "kvm-digest manual",
                "description": "archive a mailing list, thread its patch series, mail digests",
            },
        )
        return str(page)
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}")
