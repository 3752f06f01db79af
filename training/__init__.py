"""Training and evaluation of the emotion classifier (`emotion-train`, `emotion-eval`)."""
