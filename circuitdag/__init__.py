"""circuitdag: automatic circuit discovery in transformer language models."""
