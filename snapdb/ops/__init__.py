"""Operations verbs that sit above the pipelines: retention (`prune`: plan and delete
snapshots, clean up debris) and monitoring (`monitor`: status checks and Prometheus metrics).

May import the pipelines' building blocks (`manifest`, `history`, `store`, `postgres`, `config`,
`errors`); `commands` imports these modules inside its verbs; nothing below imports `ops`.
"""
