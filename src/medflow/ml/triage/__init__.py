"""Triage: models at work on new studies (issue 11)."""
