"""③ Studies: when a study is complete (quiet period), sweeping, reopening."""
