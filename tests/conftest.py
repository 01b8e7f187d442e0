"""Fixtures; the harness itself lives in harness.py so test modules can import it."""

from harness import pair  # noqa: F401 - re-exported as a fixture
from netns import oneway  # noqa: F401 - re-exported as a fixture
from sshd import sshd  # noqa: F401 - re-exported as a fixture
