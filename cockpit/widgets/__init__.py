"""The cockpit's panes: one widget per module."""
