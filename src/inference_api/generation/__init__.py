"""The one generation pipeline that /infer, chat turns and the OpenAI routes map their protocols onto."""
