"""Our PyTorch runtime for the Gemma 3 and Gemma 3n text decoders."""
