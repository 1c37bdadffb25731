"""Who is calling: API keys (and, with the security issue, JWTs) and their scopes."""
