"""PostgreSQL logical replication mechanics for the replicate-mode cutover.

- `slots`: replication connections, a logical slot created together with an exported snapshot
  (so a copy taken in that snapshot and the stream from the slot join without a gap or an
  overlap), and dropping slots safely.
- `follow`: publications and subscriptions (a database following another, in the same cluster or
  on another server), replication lag, the LSN fence, stopping and removing them.
- `compat`: which schema changes keep logical replication working, decided from what a revision
  actually did to the catalog and to existing rows (measured during the rehearsal).

Nothing here knows about cutovers, journals or stores; `snapdb.cutover.replicate` drives it.
"""
