"""⑤ Tasks: the Celery app, one task decorator, the pipeline tasks (they take ids only)."""
