"""The README stays true: its settings table is the generated one, and its commands exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from daemon.cli import build_parser
from daemon.settings import settings_table

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_settings_table_is_generated_from_settings():
    assert settings_table() in README, "regenerate with `python -m daemon.settings`"


def test_every_ranktune_command_in_the_readme_parses():
    parser = build_parser()
    commands = set(re.findall(r"`(ranktune [^`|\\]+)`", README)) | set(re.findall(r"&& (ranktune [a-z ]+)", README))
    assert "ranktune demo" in {c.strip() for c in commands}
    for cmd in commands:
        args = [a for a in shlex.split(cmd)[1:] if not a.startswith("[") and "|" not in a and a != "..."]
        args = [a for a in args if not a.endswith("]")]
        if not args or args[0].startswith("-"):
            continue
        if args[0] == "adapters" and len(args) == 1:
            args.append("list")
        if args[0] == "db" and len(args) == 1:
            args.append("current")
        if args[0] == "bench" and len(args) == 1:
            args.append("ingest")
        if args[0] == "train" and "--once" not in args:
            args.append("--once")
        parser.parse_args(args)


def test_quick_start_matches_ci():
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    # both installs pinned by constraints.txt (see tests/unit/test_deployment.py)
    for install in ("pip install -c constraints.txt torch==2.13.0", "pip install -c constraints.txt -e '.[test]'"):
        assert install in README and install in ci, install
    assert 'python -m pytest -m "not gpu"' in README and 'python -m pytest -m "not gpu"' in ci
