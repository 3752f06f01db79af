"""The emotion classifier: architecture and the safe checkpoint format."""
