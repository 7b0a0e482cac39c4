"""The feedback loop: models and readers against later outcomes (issue 11)."""
