"""Operations verbs that sit above the pipelines: retention (`prune`: plan and delete
snapshots, clean up debris), monitoring (`monitor`: status checks and Prometheus metrics), the
cron guard of ``restore --if-newer`` (`refresh`) and the operation history (`history_view`).

May import the pipelines' building blocks (`manifest`, `history`, `sources`, `store`, `postgres`,
`config`, `errors`); `commands` imports these modules inside its verbs; nothing below imports `ops`.
"""
