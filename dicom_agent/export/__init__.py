"""⑧ Export: the durable outbox and the C-STORE SCU that delivers results to destinations."""
