"""`kd serve`: the @champion of the registry as an HTTP service, with a prediction log the monitor reads.

Read it by file name:

    config   kd/config/serve.py   the `serve` section of params.yaml
    schemas  request bodies → columns (kd's /predict rows, feedback), with errors that name the problem
    oip      the Open Inference Protocol (KServe V2) request and response tensors
    inputs   columns → the model's feature matrix (a pandas-free fast path, checked against kd.predictor)
    champion loading a registry version, warming it up, polling @champion and swapping it in atomically
    batcher  optional micro-batching of concurrent requests into one model call
    log      the prediction log's tables and its reader (`read_window`), for the monitor
    chunks   what the log moves: one request's predictions as columns, or feedback rows
    writer   the log writer: batched inserts off the request path, a bounded buffer that spills to disk
    inserts  the writer's SQL: bulk JSON inserts expanded by the database, row tuples otherwise
    spill    the spill files: append-only, fsync'd, flock'd, replayed
    metrics  Prometheus metrics of requests, the model, swaps and the log
    app      the FastAPI application: routes, errors, lifespan (start the watcher and writer, flush at exit)

Only `kd.registry` talks to MLflow; nothing here imports it.
"""
