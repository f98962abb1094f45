-- Shared state of drawbridge replicas. Times are milliseconds since the Unix epoch (bigint)
-- except leases, which use the database's clock (now()) so that replicas whose clocks
-- differ still agree on when a row expires.

-- One hash chain per replica: a record is committed here before the action it records.
CREATE TABLE audit_records (
    replica text   NOT NULL,
    seq     bigint NOT NULL,
    hash    text   NOT NULL,
    line    text   NOT NULL,
    PRIMARY KEY (replica, seq)
);

-- Failed (or in-flight) password attempts, per user name ('u:NAME') and per client
-- address or /64 ('a:ADDR').
CREATE TABLE login_attempts (
    id    bigserial PRIMARY KEY,
    key   text      NOT NULL,
    at_ms bigint    NOT NULL
);
CREATE INDEX login_attempts_key ON login_attempts (key, at_ms);

-- Checks both keys against the limit and counts the attempt under both, in one statement
-- (one transaction) serialized per key by advisory locks, so concurrent attempts on
-- several replicas are counted before any is let through. Returns the ids of the two
-- counted rows and 0, or no ids and the milliseconds to wait.
CREATE FUNCTION drawbridge_login_reserve(user_key text, addr_key text, now_ms bigint,
                                         max_failures integer, window_ms bigint,
                                         OUT user_row bigint, OUT addr_row bigint,
                                         OUT retry_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    k text;
    nth bigint;
    wait bigint := 0;
BEGIN
    -- Locks in a fixed order: two replicas locking the same pair never deadlock.
    FOREACH k IN ARRAY ARRAY(SELECT unnest(ARRAY[user_key, addr_key]) ORDER BY 1) LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended('drawbridge-login:' || k, 0));
    END LOOP;
    DELETE FROM login_attempts
     WHERE key IN (user_key, addr_key) AND at_ms <= now_ms - window_ms;
    FOREACH k IN ARRAY ARRAY[user_key, addr_key] LOOP
        -- The max_failures-th newest attempt in the window: free when it leaves it.
        SELECT at_ms INTO nth FROM login_attempts
         WHERE key = k AND at_ms > now_ms - window_ms
         ORDER BY at_ms DESC, id DESC OFFSET max_failures - 1 LIMIT 1;
        IF FOUND THEN
            wait := greatest(wait, window_ms - (now_ms - nth), 1000);
        END IF;
    END LOOP;
    IF wait > 0 THEN
        user_row := NULL; addr_row := NULL; retry_ms := wait;
        RETURN;
    END IF;
    INSERT INTO login_attempts (key, at_ms) VALUES (user_key, now_ms) RETURNING id INTO user_row;
    INSERT INTO login_attempts (key, at_ms) VALUES (addr_key, now_ms) RETURNING id INTO addr_row;
    retry_ms := 0;
END
$$;

-- Replicas alive, with their lease.
CREATE TABLE replicas (
    replica     text        PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz NOT NULL
);

-- One row per authenticated SSH connection, for the per-user cap across replicas.
CREATE TABLE ssh_connections (
    replica     text        NOT NULL,
    conn        bigint      NOT NULL,
    key_id      text        NOT NULL,
    lease_until timestamptz NOT NULL,
    PRIMARY KEY (replica, conn)
);
CREATE INDEX ssh_connections_key_id ON ssh_connections (key_id);

-- Takes a place for key_id when fewer than max_connections live rows hold one (rows whose
-- lease ran out belong to a dead replica and do not count). Serialized per key id.
CREATE FUNCTION drawbridge_take_connection(rep text, conn_id bigint, kid text,
                                           max_connections integer, lease_ms bigint)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    live integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('drawbridge-conn:' || kid, 0));
    DELETE FROM ssh_connections WHERE key_id = kid AND lease_until < now();
    SELECT count(*) INTO live FROM ssh_connections WHERE key_id = kid;
    IF live >= max_connections THEN
        RETURN false;
    END IF;
    INSERT INTO ssh_connections (replica, conn, key_id, lease_until)
    VALUES (rep, conn_id, kid, now() + lease_ms * interval '1 millisecond')
    ON CONFLICT (replica, conn) DO UPDATE SET key_id = EXCLUDED.key_id,
                                              lease_until = EXCLUDED.lease_until;
    RETURN true;
END
$$;

-- One row per open forward, renewed by its replica.
CREATE TABLE open_forwards (
    replica     text        NOT NULL,
    forward     bigint      NOT NULL,
    conn        bigint      NOT NULL,
    key_id      text        NOT NULL,
    serial      text        NOT NULL,
    target      text        NOT NULL,
    opened_at   timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz NOT NULL,
    PRIMARY KEY (replica, forward)
);
