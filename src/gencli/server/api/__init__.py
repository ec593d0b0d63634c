"""One module per client protocol: Ollama, OpenAI (chat, Responses, embeddings), Anthropic."""
