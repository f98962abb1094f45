-- Device logins in progress (RFC 8628), shared by the replicas: a login started on one is
-- polled on any other. A row per drawbridge device_code, kept by its SHA-256; the
-- provider's device code sealed under drawbridge's code (AES-256-GCM), so the database
-- alone cannot poll the provider. Ended and expired rows stay 10 minutes past their
-- expiry (a reuse gets its real answer), then are deleted.
CREATE TABLE device_logins (
    code_hash     bytea       PRIMARY KEY,
    sealed        bytea       NOT NULL,
    source        text        NOT NULL,
    expires_at    timestamptz NOT NULL,
    interval_ms   bigint      NOT NULL,
    last_poll     timestamptz,
    polling_since timestamptz,
    ended         text CHECK (ended IN ('used', 'denied', 'failed'))
);
CREATE INDEX device_logins_source ON device_logins (source);

-- Starts per source in the last minute (`login.device_starts_per_minute`).
CREATE TABLE device_starts (
    source text        NOT NULL,
    at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_starts_source ON device_starts (source, at);

-- Whether `p_source` may start a login now: 'ok' (counted as a start), 'full',
-- 'source-full' or 'too-fast'. One at a time across replicas (an advisory lock), so two
-- replicas never both take the last place.
CREATE FUNCTION drawbridge_device_admit(p_source text, p_pending bigint, p_per_source bigint,
                                        p_per_minute bigint, p_tombstone_ms bigint)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('drawbridge_device_logins'));
    DELETE FROM device_logins
        WHERE expires_at + p_tombstone_ms * interval '1 millisecond' <= now();
    DELETE FROM device_starts WHERE at <= now() - interval '1 minute';
    SELECT count(*) INTO n FROM device_logins;
    IF n >= p_pending THEN RETURN 'full'; END IF;
    SELECT count(*) INTO n FROM device_logins
        WHERE source = p_source AND now() < expires_at AND ended IS NULL;
    IF n >= p_per_source THEN RETURN 'source-full'; END IF;
    SELECT count(*) INTO n FROM device_starts WHERE source = p_source;
    IF n >= p_per_minute THEN RETURN 'too-fast'; END IF;
    INSERT INTO device_starts (source) VALUES (p_source);
    RETURN 'ok';
END $$;

-- Keeps a started login; false when every place is taken.
CREATE FUNCTION drawbridge_device_insert(p_hash bytea, p_sealed bytea, p_source text,
                                         p_expires_ms bigint, p_interval_ms bigint,
                                         p_pending bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('drawbridge_device_logins'));
    SELECT count(*) INTO n FROM device_logins;
    IF n >= p_pending THEN RETURN false; END IF;
    INSERT INTO device_logins (code_hash, sealed, source, expires_at, interval_ms)
        VALUES (p_hash, p_sealed, p_source,
                now() + p_expires_ms * interval '1 millisecond', p_interval_ms);
    RETURN true;
END $$;

-- What a poll may do now: verdict 'unknown', 'expired', 'slow-down' (with the grown
-- interval), 'ask' (with the sealed provider code), or how the login ended ('used',
-- 'denied', 'failed'). The row is locked while it is decided, so two replicas polling one
-- code at once never both reach the provider.
CREATE FUNCTION drawbridge_device_gate(p_hash bytea, p_tombstone_ms bigint,
                                       p_stuck_ms bigint, p_step_ms bigint,
                                       OUT verdict text, OUT next_interval_ms bigint,
                                       OUT sealed_code bytea)
LANGUAGE plpgsql AS $$
DECLARE
    e device_logins%ROWTYPE;
BEGIN
    SELECT * INTO e FROM device_logins WHERE code_hash = p_hash FOR UPDATE;
    IF NOT FOUND THEN
        verdict := 'unknown';
        RETURN;
    END IF;
    IF now() >= e.expires_at + p_tombstone_ms * interval '1 millisecond' THEN
        DELETE FROM device_logins WHERE code_hash = p_hash;
        verdict := 'unknown';
        RETURN;
    END IF;
    IF e.ended IS NOT NULL THEN
        verdict := e.ended;
        RETURN;
    END IF;
    IF now() >= e.expires_at THEN
        UPDATE device_logins SET ended = 'failed' WHERE code_hash = p_hash;
        verdict := 'expired';
        RETURN;
    END IF;
    IF (e.polling_since IS NOT NULL
            AND now() - e.polling_since < p_stuck_ms * interval '1 millisecond')
       OR (e.last_poll IS NOT NULL
            AND now() - e.last_poll < e.interval_ms * interval '1 millisecond') THEN
        UPDATE device_logins SET interval_ms = e.interval_ms + p_step_ms, last_poll = now()
            WHERE code_hash = p_hash;
        verdict := 'slow-down';
        next_interval_ms := e.interval_ms + p_step_ms;
        RETURN;
    END IF;
    UPDATE device_logins SET last_poll = now(), polling_since = now()
        WHERE code_hash = p_hash;
    verdict := 'ask';
    next_interval_ms := e.interval_ms;
    sealed_code := e.sealed;
END $$;
