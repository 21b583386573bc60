"""The HTTP server: OpenAI-compatible routes, llama.cpp /infill and the playground, over the engine."""
