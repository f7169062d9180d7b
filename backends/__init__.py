"""How a request reaches a model: transports and servers, nothing about what prompts mean."""
