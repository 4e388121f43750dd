"""② Store: durable files (tmp + fsync + rename, hashed paths) and the idempotent index."""
