"""Models served by an upstream OpenAI-compatible fleet (vLLM): replicas, routing, health, streaming."""
