"""Training Cockpit's terminal app (Textual). It never imports torch."""
