"""Student training on Ray Train: the per-worker loop and its teacher-signal client."""
