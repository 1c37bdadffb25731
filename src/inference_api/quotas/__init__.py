"""Budgets of generated tokens per key, per minute and per day, and GET /usage."""
