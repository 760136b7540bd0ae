"""Fan-out: one job over many instances (a run of shards, each a key range, merged into one answer).

``ranges`` cuts key space, ``records`` holds what a run keeps and the store Protocols, ``decisions`` says what each
step writes (pure), ``coordinator`` runs the steps against the stores. Adapters for the stores live in
``worker.adapters``.
"""
