"""Team scale: the shared tracking server and object store, queued experiments, Ray sweeps.

``services`` starts (and stops) a PostgreSQL-backed ``mlflow server`` with artifacts proxied to an
S3-compatible store; ``queue`` runs several ``dvc exp`` experiments at once with the cores split
between them; ``sweep`` runs models × losses × seeds as Ray Tune trials logging to the shared server.
"""
