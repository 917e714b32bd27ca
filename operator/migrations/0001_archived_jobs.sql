-- Finished Jobs, kept after their TTL deletes them from the cluster.
-- One row per Job uid: a Job recreated under the same name is another row,
-- and writing the same Job again (a retry after a lost answer) replaces it.
CREATE TABLE drover_archived_jobs (
    uid          text        PRIMARY KEY,
    namespace    text        NOT NULL,
    name         text        NOT NULL,
    worker       text        NOT NULL,
    phase        text        NOT NULL,
    attempt      integer     NOT NULL,
    created_at   timestamptz,
    queued_at    timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz NOT NULL,
    error_reason text,
    archived_at  timestamptz NOT NULL DEFAULT now(),
    -- The whole Job as the apiserver last served it: spec, status, steps, result.
    job          jsonb       NOT NULL
);

-- `kubectl drover history [-n NS] [-w WORKER] [--since D]`: newest first.
CREATE INDEX drover_archived_jobs_finished
    ON drover_archived_jobs (finished_at DESC);
CREATE INDEX drover_archived_jobs_by_worker
    ON drover_archived_jobs (namespace, worker, finished_at DESC);
