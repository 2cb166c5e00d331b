"""The cockpit's screens: the live view of a run (the default), and the modal dialogs over it."""
