-- TOTP steps already used, per user: a one-time code is accepted once across all replicas.
-- Steps more than a few behind now can never be presented again and are deleted by the
-- replicas' lease task.
CREATE TABLE totp_used (
    user_name text   NOT NULL,
    step      bigint NOT NULL,
    PRIMARY KEY (user_name, step)
);
