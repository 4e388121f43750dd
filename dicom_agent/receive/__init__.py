"""① Receive: the C-STORE SCP (contexts, thin handlers, server)."""
