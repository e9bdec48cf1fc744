"""The README documents every configuration key, and nothing that does not exist."""

import re
from pathlib import Path

from mercato.config import NESTED, SECTIONS, Config

README = Path(__file__).resolve().parents[1] / "README.md"


def documented_keys() -> set[str]:
    keys: set[str] = set()
    for cell in re.findall(r"^\| `([^`]+)`(?: / `([^`]+)`)? \|", README.read_text(), re.M):
        keys.update(k for k in cell if k)
    return keys


def config_keys() -> set[str]:
    keys = {name for name in Config.__struct_fields__ if name not in SECTIONS}
    for section, struct in SECTIONS.items():
        keys.update(f"{section}.{name}" for name in struct.__struct_fields__)
    # Tables of tables (one table per job) are documented per key: scheduler.jobs.<name>.retries
    for (section, table), struct in NESTED.items():
        keys.remove(f"{section}.{table}")
        keys.update(f"{section}.{table}.<name>.{name}" for name in struct.__struct_fields__)
    return keys


def test_every_config_key_is_documented():
    assert config_keys() - documented_keys() == set()


def test_no_documented_key_is_made_up():
    assert documented_keys() - config_keys() == set()
