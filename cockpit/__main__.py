"""python -m cockpit"""

from cockpit.cli import entry

if __name__ == "__main__":
    entry()
