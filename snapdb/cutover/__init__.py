"""The A/B cutover: freeze the live database (A), build the new release beside it (B), prove that
A took no write after the freeze point, swap B in by rename, keep A set aside for rollback.

Modules: `journal` (the step journal in the store's catalog, written atomically before and after
every step), `freeze` (the freeze layers, the drain, the probes and the freeze point: PostgreSQL
mechanics), `proof` (what "A unchanged since the freeze point" means and how it is checked),
`hooks` (operator commands at fixed points), `plan` (preflight and the predicted window), `run`
(the orchestration: start, resume, abort) and `rollback`.

May import the pipelines (`snapshot`, `restore`, `verify`), `migrate`, `history`, `locks`,
`swap` and the modules below them; nothing below imports this package.
"""
