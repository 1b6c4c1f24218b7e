"""Per-modality encoders (vision, audio) that feed the decoder's input embeddings."""
