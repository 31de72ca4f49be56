"""The score job's stages, in flow order: read, decode, score, write."""
