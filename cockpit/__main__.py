"""python -m cockpit"""

from cockpit.cli import entry

entry()
