"""OpenAI's Responses API (/v1/responses) on the generation pipeline and the chat sessions."""
