"""The units of work of churn-ops, one package per stage of the loop (DESIGN §1, §2).

``data`` → ``features`` → ``training`` → ``scoring`` → ``audit``, watched by ``monitoring``,
announced by ``alerting``, served by ``serving``, run by ``ops``; ``core`` is shared plumbing.
Plain typed functions carry the logic; the Prefect flows in ``flows/`` only order them.
"""
