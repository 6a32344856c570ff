"""What the tests share besides fixtures (those are in tests/conftest.py): helper modules,
task modules workers import by name, scripts. Test modules import from here, never from
each other."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]   # the repository
SCRIPTS = Path(__file__).resolve().parent / "scripts"
