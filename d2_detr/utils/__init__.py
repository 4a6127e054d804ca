"""Small shared helpers: atomic file writes and the command-line user-error path."""
