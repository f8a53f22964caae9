"""The verinfer worker node (PROTOCOL §9): watcher, Celery pipeline, sender, keeper.

Process layout of ``verinfer node run`` (docs/operations.md has the details):

* the supervisor process runs the watcher and the keeper (threads) and serves the metrics;
* one Celery worker on the node's ``chain`` queue is the transaction sender (one per key);
* one or more Celery workers on the node's ``infer`` queue batch jobs into the engine.
"""
