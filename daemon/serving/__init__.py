"""Serving: the live scorer, the control topic and reconcile, the HTTP API."""
