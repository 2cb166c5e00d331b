"""The ground floor both halves stand on: events, the control protocol, the run directory's
layout, stop reasons and plans, atomic writes and the bad-input error.

Standard library only and cheap to import: the cockpit imports this package and never torch;
`engine/` builds on it and it imports neither (import-linter checks it, see pyproject.toml).
"""
